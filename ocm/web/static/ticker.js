// A one-second tick for the chat page's keepalives. Browsers slow down the
// timers of a hidden tab (down to one a minute), which would let an idle
// member time out; a worker's timers are not slowed like that.
setInterval(() => postMessage(0), 1000);
