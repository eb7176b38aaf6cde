"""
The browser plane (SPEC section 8): the chat page and the WebSocket that
carries the SPEC's own bytes.

 - L{ocm.web.gateway}: the WebSocket at C{/ws}: a request frame, then a
   member's datagrams (L{ocm.web.gateway.WebRoute} is its route);
 - L{ocm.web.site}: the page's static files at C{/}, the security headers;
 - C{ocm/web/static/}: the page itself (no build step, no CDN).
"""
