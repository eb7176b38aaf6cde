/*
 * crelay.c -- a tight native relay, the yardstick for ocm's relay rate.
 *
 * Not a server: a benchmark reference that speaks just enough of the SPEC for
 * ocmload to measure it the same way it measures ocm.  TCRP create and join
 * of open rooms (no passwords, no capacity, no list), tokens bound to the
 * requesting IP and then to the first (IP, port) heard from, `\x00hello`
 * answered with `welcome`, `join` notices, and chat (valid UTF-8) relayed
 * to every other bound member of the room with the sender's name prefix.
 * No timeouts, no leave, no limits: nothing that the relay's hot path of a
 * real server would skip.  One thread, epoll, level-triggered.
 *
 * Build and run (outside the project tree):
 *     gcc -O2 -Wall -o /tmp/crelay bench/crelay.c
 *     taskset -c 1 /tmp/crelay --tcp 9000 --udp 9001            # sendto per recipient
 *     taskset -c 1 /tmp/crelay --tcp 9000 --udp 9001 --mmsg     # recvmmsg + sendmmsg batches
 *
 * Only binds 127.0.0.1.  Stops on SIGINT/SIGTERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define TOKLEN 32
#define MAXBODY 65536
#define TABLE (1 << 20) /* open addressing; rooms and tokens, never deleted */
#define VLEN 64
#define OUTMAX 4094
#define INMAX 4096

typedef struct room room_t;
typedef struct {
    char tok[TOKLEN];
    uint8_t name[255];
    int nlen;
    room_t *room;
    uint32_t ip; /* network order, from the TCP request */
    struct sockaddr_in addr;
    int bound;
} member_t;

struct room {
    uint8_t name[255];
    int nlen;
    member_t *host;
    member_t **m; /* bound members */
    int n, cap;
    member_t **all; /* every member, for username uniqueness */
    int nall, capall;
};

typedef struct {
    int fd;
    uint32_t ip;
    uint8_t *buf;
    size_t len;
} conn_t;

static room_t *rooms[TABLE];
static member_t *tokens[TABLE];
static int udp_fd, udp_port, use_mmsg;
static volatile sig_atomic_t stop;
static unsigned long long relayed, received, dropped;

static uint64_t hash(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ULL;
    return h;
}

static room_t **room_slot(const uint8_t *name, int n)
{
    for (uint64_t i = hash(name, (size_t)n) & (TABLE - 1);; i = (i + 1) & (TABLE - 1))
        if (!rooms[i] || (rooms[i]->nlen == n && !memcmp(rooms[i]->name, name, (size_t)n))) return &rooms[i];
}

static member_t **token_slot(const uint8_t *tok, int n)
{
    for (uint64_t i = hash(tok, (size_t)n) & (TABLE - 1);; i = (i + 1) & (TABLE - 1))
        if (!tokens[i] || (n == TOKLEN && !memcmp(tokens[i]->tok, tok, TOKLEN))) return &tokens[i];
}

static int utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        int k;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0) { k = 1; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { k = 2; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { k = 3; cp = c & 0x07; }
        else return 0;
        for (int j = 1; j <= k; j++) {
            if (i + (size_t)j >= n || (s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += (size_t)k + 1;
    }
    return 1;
}

/* the string value of "key" in a flat JSON object (no unescaping: bench names are plain) */
static int json_str(const uint8_t *js, size_t n, const char *key, uint8_t *out, int max)
{
    char pat[64];
    int pl = snprintf(pat, sizeof pat, "\"%s\"", key);
    for (size_t i = 0; i + (size_t)pl <= n; i++) {
        if (memcmp(js + i, pat, (size_t)pl)) continue;
        size_t j = i + (size_t)pl;
        while (j < n && (js[j] == ' ' || js[j] == ':')) j++;
        if (j >= n || js[j] != '"') return -1;
        size_t s = ++j;
        while (j < n && js[j] != '"') j += js[j] == '\\' ? 2 : 1;
        if (j >= n || j - s > (size_t)max) return -1;
        memcpy(out, js + s, j - s);
        return (int)(j - s);
    }
    return -1;
}

static void frame(uint8_t *out, size_t *len, const uint8_t *room, int rl, int op, int state, const void *p, size_t pl)
{
    uint8_t *h = out + *len;
    memset(h, 0, 32);
    h[0] = (uint8_t)rl;
    h[1] = (uint8_t)op;
    h[2] = (uint8_t)state;
    for (int k = 0; k < 8; k++) h[31 - k] = (uint8_t)(pl >> (8 * k));
    memcpy(h + 32, room, (size_t)rl);
    memcpy(h + 32 + rl, p, pl);
    *len += 32 + (size_t)rl + pl;
}

static void reply_error(int fd, const uint8_t *room, int rl, int op, int status, const char *why)
{
    uint8_t out[1024];
    size_t len = 0;
    char js[256];
    int n = snprintf(js, sizeof js, "{\"status\": %d, \"message\": \"%s\"}", status, why);
    frame(out, &len, room, rl, op, 1, js, (size_t)n);
    (void)!write(fd, out, len);
}

static void notice(member_t *to, const char *js, int n)
{
    uint8_t out[OUTMAX];
    out[0] = 0;
    memcpy(out + 1, js, (size_t)n);
    sendto(udp_fd, out, (size_t)n + 1, MSG_DONTWAIT, (struct sockaddr *)&to->addr, sizeof to->addr);
}

/* one complete TCRP request */
static void request(conn_t *c)
{
    const uint8_t *b = c->buf;
    int rl = b[0], op = b[1];
    const uint8_t *name = b + 32, *js = b + 32 + rl;
    size_t pl = c->len - 32 - (size_t)rl;
    uint8_t user[255];
    int ul = json_str(js, pl, "username", user, 255);
    if (b[2] != 0 || (op != 1 && op != 2) || rl == 0 || ul <= 0) {
        reply_error(c->fd, name, rl, op, 400, "unsupported request");
        return;
    }
    room_t **slot = room_slot(name, rl);
    room_t *r = *slot;
    if (op == 1 && r) { reply_error(c->fd, name, rl, op, 409, "room name taken"); return; }
    if (op == 2 && !r) { reply_error(c->fd, name, rl, op, 404, "no such room"); return; }
    if (op == 1) {
        r = *slot = calloc(1, sizeof *r);
        memcpy(r->name, name, (size_t)rl);
        r->nlen = rl;
    }
    for (int i = 0; i < r->nall; i++)
        if (r->all[i]->nlen == ul && !memcmp(r->all[i]->name, user, (size_t)ul)) {
            reply_error(c->fd, name, rl, op, 409, "username taken");
            return;
        }
    member_t *m = calloc(1, sizeof *m);
    uint8_t raw[TOKLEN / 2];
    do {
        if (getrandom(raw, sizeof raw, 0) != sizeof raw) abort();
        for (int k = 0; k < TOKLEN / 2; k++) sprintf(m->tok + 2 * k, "%02x", raw[k]);
    } while (*token_slot((uint8_t *)m->tok, TOKLEN));
    memcpy(m->name, user, (size_t)ul);
    m->nlen = ul;
    m->room = r;
    m->ip = c->ip;
    *token_slot((uint8_t *)m->tok, TOKLEN) = m;
    if (op == 1) r->host = m;
    if (r->nall == r->capall) r->all = realloc(r->all, sizeof *r->all * (size_t)(r->capall = r->capall * 2 + 8));
    r->all[r->nall++] = m;
    uint8_t out[1024];
    size_t len = 0;
    char ok[128];
    int n = snprintf(ok, sizeof ok, "{\"status\": 200, \"udp_port\": %d, \"timeout\": 30}", udp_port);
    frame(out, &len, name, rl, op, 1, ok, (size_t)n);
    frame(out, &len, name, rl, op, 2, m->tok, TOKLEN);
    (void)!write(c->fd, out, len);
}

static void welcome(member_t *m)
{
    room_t *r = m->room;
    char js[OUTMAX];
    int n = snprintf(js, sizeof js, "{\"event\": \"welcome\", \"room\": \"%.*s\", \"user\": \"%.*s\", \"host\": \"%.*s\", \"members\": [",
                     r->nlen, r->name, m->nlen, m->name, r->host->nlen, r->host->name);
    for (int i = 0; i < r->n && n < OUTMAX - 300; i++)
        n += snprintf(js + n, sizeof js - (size_t)n, "%s\"%.*s\"", i ? ", " : "", r->m[i]->nlen, r->m[i]->name);
    n += snprintf(js + n, sizeof js - (size_t)n, "]}");
    notice(m, js, n);
}

static struct mmsghdr out_msgs[VLEN];
static struct iovec out_iov;

/* one datagram from a client */
static void datagram(const uint8_t *d, size_t len, const struct sockaddr_in *from)
{
    received++;
    if (len < 2) { dropped++; return; }
    size_t R = d[0], T = d[1];
    if (2 + R + T > len) { dropped++; return; }
    member_t *m = *token_slot(d + 2 + R, (int)T);
    if (!m || T != TOKLEN || m->room->nlen != (int)R || memcmp(m->room->name, d + 2, R) ||
        m->ip != from->sin_addr.s_addr) {
        dropped++;
        return;
    }
    room_t *r = m->room;
    const uint8_t *msg = d + 2 + R + T;
    size_t ml = len - 2 - R - T;
    if (!m->bound) {
        m->bound = 1;
        m->addr = *from;
        if (r->n == r->cap) r->m = realloc(r->m, sizeof *r->m * (size_t)(r->cap = r->cap * 2 + 8));
        r->m[r->n++] = m;
        welcome(m);
        char js[300];
        int n = snprintf(js, sizeof js, "{\"event\": \"join\", \"user\": \"%.*s\"}", m->nlen, m->name);
        for (int i = 0; i < r->n; i++)
            if (r->m[i] != m) notice(r->m[i], js, n);
    } else if (m->addr.sin_port != from->sin_port || m->addr.sin_addr.s_addr != from->sin_addr.s_addr) {
        dropped++;
        return;
    }
    if (ml == 0) return;
    if (msg[0] == 0) {
        if (ml == 6 && !memcmp(msg + 1, "hello", 5)) welcome(m);
        return;
    }
    if (1 + (size_t)m->nlen + ml > OUTMAX || !utf8_ok(msg, ml)) { dropped++; return; }
    uint8_t out[OUTMAX];
    out[0] = (uint8_t)m->nlen;
    memcpy(out + 1, m->name, (size_t)m->nlen);
    memcpy(out + 1 + m->nlen, msg, ml);
    size_t ol = 1 + (size_t)m->nlen + ml;
    if (!use_mmsg) {
        for (int i = 0; i < r->n; i++) {
            member_t *to = r->m[i];
            if (to == m) continue;
            if (sendto(udp_fd, out, ol, MSG_DONTWAIT, (struct sockaddr *)&to->addr, sizeof to->addr) >= 0) relayed++;
        }
        return;
    }
    out_iov.iov_base = out;
    out_iov.iov_len = ol;
    int k = 0;
    for (int i = 0; i < r->n; i++) {
        member_t *to = r->m[i];
        if (to == m) continue;
        out_msgs[k].msg_hdr.msg_name = &to->addr;
        out_msgs[k].msg_hdr.msg_namelen = sizeof to->addr;
        out_msgs[k].msg_hdr.msg_iov = &out_iov;
        out_msgs[k].msg_hdr.msg_iovlen = 1;
        if (++k == VLEN || i == r->n - 1) {
            int s = sendmmsg(udp_fd, out_msgs, (unsigned)k, MSG_DONTWAIT);
            if (s > 0) relayed += (unsigned)s;
            k = 0;
        }
    }
    if (k) {
        int s = sendmmsg(udp_fd, out_msgs, (unsigned)k, MSG_DONTWAIT);
        if (s > 0) relayed += (unsigned)s;
    }
}

static void read_udp(void)
{
    static uint8_t bufs[VLEN][INMAX + 1];
    static struct sockaddr_in from[VLEN];
    static struct mmsghdr msgs[VLEN];
    static struct iovec iov[VLEN];
    for (int burst = 0; burst < 4096;) {
        if (use_mmsg) {
            for (int i = 0; i < VLEN; i++) {
                iov[i].iov_base = bufs[i];
                iov[i].iov_len = INMAX + 1;
                msgs[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i], .msg_iov = &iov[i], .msg_iovlen = 1};
            }
            int n = recvmmsg(udp_fd, msgs, VLEN, MSG_DONTWAIT, NULL);
            if (n <= 0) return;
            for (int i = 0; i < n; i++)
                if (msgs[i].msg_len <= INMAX) datagram(bufs[i], msgs[i].msg_len, &from[i]);
                else dropped++;
            burst += n;
        } else {
            socklen_t fl = sizeof from[0];
            ssize_t n = recvfrom(udp_fd, bufs[0], INMAX + 1, MSG_DONTWAIT, (struct sockaddr *)&from[0], &fl);
            if (n < 0) return;
            if (n <= INMAX) datagram(bufs[0], (size_t)n, &from[0]);
            else dropped++;
            burst++;
        }
    }
}

static void on_signal(int s)
{
    (void)s;
    stop = 1;
}

static int listen_on(int type, int port)
{
    int fd = socket(AF_INET, type | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(1); }
    if (type == SOCK_STREAM && listen(fd, 4096) < 0) { perror("listen"); exit(1); }
    return fd;
}

int main(int argc, char **argv)
{
    int tcp_port = 9000;
    udp_port = 9001;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tcp") && i + 1 < argc) tcp_port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--udp") && i + 1 < argc) udp_port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mmsg")) use_mmsg = 1;
        else { fprintf(stderr, "usage: crelay [--tcp PORT] [--udp PORT] [--mmsg]\n"); return 2; }
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    int tcp_fd = listen_on(SOCK_STREAM, tcp_port);
    udp_fd = listen_on(SOCK_DGRAM, udp_port);
    int rcv = 1 << 20;
    setsockopt(udp_fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, tcp_fd, &ev);
    ev.data.ptr = &udp_fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, udp_fd, &ev);
    fprintf(stderr, "crelay: tcp %d udp %d (%s)\n", tcp_port, udp_port, use_mmsg ? "recvmmsg/sendmmsg" : "recvfrom/sendto");
    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, 200);
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &udp_fd) {
                read_udp();
            } else if (p == NULL) {
                struct sockaddr_in a;
                socklen_t al = sizeof a;
                int fd;
                while ((fd = accept4(tcp_fd, (struct sockaddr *)&a, &al, SOCK_NONBLOCK)) >= 0) {
                    conn_t *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    c->ip = a.sin_addr.s_addr;
                    c->buf = malloc(32 + 255 + MAXBODY);
                    struct epoll_event ce = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
                    al = sizeof a;
                }
            } else {
                conn_t *c = p;
                ssize_t r = read(c->fd, c->buf + c->len, 32 + 255 + MAXBODY - c->len);
                int done = r <= 0;
                if (r > 0) c->len += (size_t)r;
                if (!done && c->len >= 32) {
                    uint64_t pl = 0, high = 0;
                    for (int k = 3; k < 24; k++) high |= c->buf[k];
                    for (int k = 24; k < 32; k++) pl = (pl << 8) | c->buf[k];
                    if (high || pl > MAXBODY) {
                        reply_error(c->fd, c->buf + 32, 0, c->buf[1], 413, "payload too large");
                        done = 1;
                    } else if (c->len >= 32 + c->buf[0] + pl) {
                        c->len = 32 + c->buf[0] + pl;
                        request(c);
                        done = 1;
                    }
                }
                if (done) {
                    close(c->fd);
                    free(c->buf);
                    free(c);
                }
            }
        }
    }
    fprintf(stderr, "crelay: received %llu, relayed %llu, dropped %llu\n", received, relayed, dropped);
    return 0;
}
