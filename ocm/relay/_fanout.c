/*
 * _ocm_fanout: the relay's fan-out loop in C.
 *
 * Why: at the assignment's load almost all of the server's time is the
 * system calls of the fan-out. Measured to the same sink sockets, a sendto
 * costs 3.4 us from Python (socket.sendto parses its arguments and address
 * tuple and releases and retakes the GIL on every call) and 2.3 us from a
 * loop in C; one sendmmsg for the whole room (Python's socket has none)
 * saves a system call entry per recipient: 18-30% of the relay's CPU per
 * relayed datagram in one interleaved run of bench/relay_bench.py, within
 * the noise (5.0-5.8 us either way) in a later one on a busier machine;
 * the kernel's own work per datagram stays. The addresses are packed once, when a member binds
 * (pack_address), so the loop does nothing but fill the message headers.
 *
 * Optional: when this module cannot be built, ocm/relay/fanout.py runs the same
 * loop in Python. Nothing here blocks (the socket is non-blocking and
 * MSG_DONTWAIT is passed), so the GIL is kept.
 */
#define _GNU_SOURCE /* sendmmsg, recvmmsg */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* What ocm/relay/fanout.py expects of this module (it runs the Python loops
 * when an older build is found): 2 = fan_out returns exceptions and writes
 * route-only members itself; recv_batch; 3 = use_types and relay_batch;
 * 4 = relay_batch reads until drained (a budget, and a clock to call). */
#define OCM_FANOUT_API 4

static PyObject *sockaddr_attr, *route_attr; /* "sockaddr", "route", interned */

/*
 * The slots of ocm.rooms.Member and Room read on the hot path, by offset
 * (use_types): a PyObject_GetAttr by name costs a type lookup and a
 * descriptor call, about 30% of the fan-out's own work per recipient. Only
 * objects of exactly these types are read so; anything else by name.
 */
static PyTypeObject *member_type, *room_type;
static Py_ssize_t m_room, m_sockaddr, m_prefix, m_last_seen, m_failures, m_allowance, m_allowance_at;
static Py_ssize_t r_name_bytes, r_bound, r_muted, r_history_size;
#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* The offset of a __slots__ attribute of type, or -1 (an exception set). */
static Py_ssize_t slot_offset(PyTypeObject *type, const char *name)
{
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    if (descr == NULL) return -1;
    Py_ssize_t offset = -1;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type) && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX &&
        !(((PyMemberDescrObject *)descr)->d_member->flags & READONLY))
        offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    else
        PyErr_Format(PyExc_TypeError, "%s.%s is not a writable slot", type->tp_name, name);
    Py_DECREF(descr);
    return offset;
}

/* Replace a slot's value (stealing the new reference). */
static void set_slot(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    PyObject *old = SLOT(obj, offset);
    SLOT(obj, offset) = value;
    Py_XDECREF(old);
}

PyDoc_STRVAR(use_types_doc,
"use_types(Member, Room)\n\n"
"Read these classes' slots by offset on the hot path (ocm/rooms/model.py).");

static PyObject *use_types(PyObject *module, PyObject *args)
{
    (void)module;
    PyTypeObject *member, *room;
    if (!PyArg_ParseTuple(args, "O!O!:use_types", &PyType_Type, &member, &PyType_Type, &room)) return NULL;
    Py_ssize_t offsets[11];
    const char *member_slots[] = {"room", "sockaddr", "prefix", "last_seen", "failures", "allowance", "allowance_at"};
    const char *room_slots[] = {"name_bytes", "bound", "muted", "history_size"};
    for (int i = 0; i < 7; i++)
        if ((offsets[i] = slot_offset(member, member_slots[i])) < 0) return NULL;
    for (int i = 0; i < 4; i++)
        if ((offsets[7 + i] = slot_offset(room, room_slots[i])) < 0) return NULL;
    m_room = offsets[0], m_sockaddr = offsets[1], m_prefix = offsets[2], m_last_seen = offsets[3];
    m_failures = offsets[4], m_allowance = offsets[5], m_allowance_at = offsets[6];
    r_name_bytes = offsets[7], r_bound = offsets[8], r_muted = offsets[9], r_history_size = offsets[10];
    Py_INCREF(member);
    Py_INCREF(room);
    Py_XSETREF(member_type, member);
    Py_XSETREF(room_type, room);
    Py_RETURN_NONE;
}

/* member.sockaddr (a new reference), by offset for a Member. */
static PyObject *sockaddr_of(PyObject *member)
{
    if (Py_TYPE(member) == member_type) {
        PyObject *sa = SLOT(member, m_sockaddr);
        if (sa != NULL) {
            Py_INCREF(sa);
            return sa;
        }
    }
    return PyObject_GetAttr(member, sockaddr_attr);
}

PyDoc_STRVAR(pack_address_doc,
"pack_address(host, port) -> bytes | None\n\n"
"The C struct sockaddr for an (IP text, port) address as recvfrom gives it,\n"
"or None if the text is not a plain IPv4 or IPv6 address.");

static PyObject *pack_address(PyObject *module, PyObject *args)
{
    (void)module;
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "si:pack_address", &host, &port)) return NULL;
    if (port < 0 || port > 65535) Py_RETURN_NONE;
    struct sockaddr_in a4;
    memset(&a4, 0, sizeof a4);
    if (inet_pton(AF_INET, host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)port);
        return PyBytes_FromStringAndSize((const char *)&a4, sizeof a4);
    }
    struct sockaddr_in6 a6;
    memset(&a6, 0, sizeof a6);
    if (inet_pton(AF_INET6, host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)port);
        return PyBytes_FromStringAndSize((const char *)&a6, sizeof a6);
    }
    Py_RETURN_NONE;
}

/* Recipients per sendmmsg call: a room's fan-out goes out in one call up to
 * this size (the kernel takes at most UIO_MAXIOV, 1024, a call). */
#define BATCH 256

PyDoc_STRVAR(fan_out_doc,
"fan_out(fd, data, members, sender) -> (sent, failures)\n\n"
"Send data (bytes) from socket fd to the packed address (its 'sockaddr'\n"
"attribute) of every object in the list members except sender, in one\n"
"sendmmsg call per 256 recipients; a member with no packed address (a\n"
"tunnel, a WebSocket) is written by its route (member.route.send(data)).\n"
"sent counts the datagrams written; failures is None, or a list of\n"
"(member, exception) for each that failed (an OSError with the errno of a\n"
"failed send, or what the route raised), as ocm/relay/fanout.py's Python\n"
"loop returns them.");

static PyObject *send_attr; /* "send", interned */

/* Append (member, exc) to *failures (created on first use); -1 on error. */
static int add_failure(PyObject **failures, PyObject *member, PyObject *exc)
{
    if (*failures == NULL && (*failures = PyList_New(0)) == NULL) return -1;
    PyObject *item = PyTuple_Pack(2, member, exc);
    if (item == NULL) return -1;
    int appended = PyList_Append(*failures, item);
    Py_DECREF(item);
    return appended;
}

/* Append (member, OSError(err)) to *failures; -1 on error. */
static int errno_failure(PyObject **failures, PyObject *member, int err)
{
    /* OSError(errno, text) makes the subclass, as socket.sendto raises it */
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
    if (exc == NULL) return -1;
    int added = add_failure(failures, member, exc);
    Py_DECREF(exc);
    return added;
}

/*
 * Write data to member through its route (member.route.send(data)); an
 * Exception it raises is set aside in *failures, as the Python loop does.
 * -1 on error (anything else raised, or no memory).
 */
static int by_route(PyObject **failures, PyObject *member, PyObject *data, Py_ssize_t *sent)
{
    PyObject *route = PyObject_GetAttr(member, route_attr);
    PyObject *result = route == NULL ? NULL : PyObject_CallMethodOneArg(route, send_attr, data);
    Py_XDECREF(route);
    if (result != NULL) {
        Py_DECREF(result);
        (*sent)++;
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) PyException_SetTraceback(value, traceback);
    int added = value == NULL ? -1 : add_failure(failures, member, value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return added;
}

/*
 * Send the batch: msgs[0..count) to who[0..count). sendmmsg stops at the
 * first message that fails (and reports that error only when it is the
 * first of the call): that member's errno is recorded and the rest of the
 * batch is sent on. Drops the references the batch holds.
 */
static int send_batch(int fd, struct mmsghdr *msgs, PyObject **who, PyObject **addrs, unsigned count,
                      Py_ssize_t *sent, PyObject **failures)
{
    int status = 0;
    unsigned i = 0;
    while (i < count) {
        int n = sendmmsg(fd, msgs + i, count - i, MSG_DONTWAIT);
        if (n > 0) {
            *sent += n;
            i += (unsigned)n;
            continue;
        }
        int err = n == 0 ? EAGAIN : errno;
        if (status == 0 && errno_failure(failures, who[i], err) < 0) status = -1;
        i++;
    }
    for (i = 0; i < count; i++) {
        Py_DECREF(addrs[i]);
        Py_DECREF(who[i]);
    }
    return status;
}

/*
 * The fan-out of fan_out: size bytes at buf to every member of the list
 * members but sender. *data is the same as bytes, made here (a new
 * reference) if a route must write it and the caller had none. Adds to
 * *sent and *failures; -1 on error.
 */
static int fan_out_buffer(int fd, const char *buf, Py_ssize_t size, PyObject **data, PyObject *members, PyObject *sender,
                          Py_ssize_t *sent, PyObject **failures)
{
    struct mmsghdr msgs[BATCH];
    PyObject *who[BATCH], *addrs[BATCH];
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = (size_t)size};
    unsigned count = 0;
    /* members may change size if an attribute lookup runs Python code: index each time */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(members); i++) {
        PyObject *member = PyList_GET_ITEM(members, i);
        if (member == sender) continue;
        Py_INCREF(member); /* held while in use, whatever the attribute lookup does */
        PyObject *sa = sockaddr_of(member);
        if (sa == NULL) {
            Py_DECREF(member);
            goto error;
        }
        if (!PyBytes_Check(sa)) { /* no packed address: its route writes it */
            Py_DECREF(sa);
            if (*data == NULL && (*data = PyBytes_FromStringAndSize(buf, size)) == NULL) {
                Py_DECREF(member);
                goto error;
            }
            int failed = by_route(failures, member, *data, sent);
            Py_DECREF(member);
            if (failed < 0) goto error;
            continue;
        }
        struct msghdr *h = &msgs[count].msg_hdr;
        memset(h, 0, sizeof *h);
        h->msg_name = PyBytes_AS_STRING(sa);
        h->msg_namelen = (socklen_t)PyBytes_GET_SIZE(sa);
        h->msg_iov = &iov;
        h->msg_iovlen = 1;
        who[count] = member;
        addrs[count] = sa;
        if (++count == BATCH) {
            int status = send_batch(fd, msgs, who, addrs, count, sent, failures);
            count = 0;
            if (status < 0) goto error;
        }
    }
    if (count > 0 && send_batch(fd, msgs, who, addrs, count, sent, failures) < 0) return -1;
    return 0;
error:
    for (unsigned j = 0; j < count; j++) {
        Py_DECREF(addrs[j]);
        Py_DECREF(who[j]);
    }
    return -1;
}

static PyObject *fan_out(PyObject *module, PyObject *args)
{
    (void)module;
    int fd;
    PyObject *data, *members, *sender;
    if (!PyArg_ParseTuple(args, "iO!O!O:fan_out", &fd, &PyBytes_Type, &data, &PyList_Type, &members, &sender)) return NULL;
    PyObject *failures = NULL, *same = data;
    Py_ssize_t sent = 0;
    Py_INCREF(same);
    int status = fan_out_buffer(fd, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), &same, members, sender, &sent, &failures);
    Py_DECREF(same);
    if (status < 0) {
        Py_XDECREF(failures);
        return NULL;
    }
    if (failures == NULL) return Py_BuildValue("(nO)", sent, Py_None);
    return Py_BuildValue("(nN)", sent, failures);
}

#ifdef OCM_SEAL
/*
 * Secure mode (docs/secure.rst): the same loop, each datagram sealed for its
 * recipient with ChaCha20-Poly1305 through libcrypto's EVP interface, as
 * ocm/sealing.py's Channel.seal does it: Counter (8, big-endian) |
 * Ciphertext | Tag (16), nonce = the channel's direction (4) | Counter,
 * associated data = the member's clear header; the channel's counter then
 * grows by one. The cryptography package runs the same OpenSSL code, but a
 * call from Python per recipient (and a sendto) costs several times the
 * sealing itself. Built only where libcrypto's headers are found (setup.py).
 */
#include <openssl/evp.h>

#if PY_VERSION_HEX >= 0x030D0000
#define lookup_attr PyObject_GetOptionalAttr
#else
#define lookup_attr _PyObject_LookupAttr
#endif

static PyObject *sealed_to_attr, *channel_attr, *key_attr, *aad_attr, *outgoing_attr, *counter_attr;
static EVP_CIPHER_CTX *seal_ctx;

#define KEY_SIZE 32
#define COUNTER_SIZE 8
#define TAG_SIZE 16

/* Bytes attribute name of obj, or NULL (no exception) if it is missing or not bytes. */
static PyObject *bytes_attr(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (!PyBytes_Check(value)) {
        Py_DECREF(value);
        return NULL;
    }
    return value;
}

/*
 * Seal data for member into out (len(data) + 24 bytes) and advance its
 * channel's counter; its packed address in *to (a new reference). 0 done;
 * 1 not sealable here (no sealed UDP route, or a counter at its end: the
 * caller's route sends it, or raises); -1 error (an exception is set).
 */
static int seal_for(PyObject *member, PyObject *data, unsigned char *out, PyObject **to)
{
    PyObject *route = PyObject_GetAttr(member, route_attr);
    if (route == NULL) return -1;
    PyObject *packed = NULL;
    int found = lookup_attr(route, sealed_to_attr, &packed);
    Py_DECREF(route);
    if (found < 0) return -1;
    if (found == 0 || !PyBytes_Check(packed)) {
        Py_XDECREF(packed);
        return 1;
    }
    int result = 1;
    PyObject *channel = PyObject_GetAttr(member, channel_attr);
    if (channel == NULL) {
        Py_DECREF(packed);
        return -1;
    }
    PyObject *key = bytes_attr(member, key_attr), *aad = bytes_attr(channel, aad_attr);
    PyObject *outgoing = bytes_attr(channel, outgoing_attr), *counter = PyObject_GetAttr(channel, counter_attr);
    if (counter == NULL) PyErr_Clear();
    if (key == NULL || aad == NULL || outgoing == NULL || counter == NULL || !PyLong_Check(counter) ||
        PyBytes_GET_SIZE(key) != KEY_SIZE || PyBytes_GET_SIZE(outgoing) != 4 || PyBytes_GET_SIZE(aad) > INT_MAX)
        goto done;
    unsigned long long n = PyLong_AsUnsignedLongLong(counter);
    if (n == (unsigned long long)-1 && PyErr_Occurred()) { /* negative, or past 2**64 - 1: Python's seal raises */
        PyErr_Clear();
        goto done;
    }
    unsigned char nonce[12];
    memcpy(nonce, PyBytes_AS_STRING(outgoing), 4);
    for (int b = 0; b < COUNTER_SIZE; b++) out[b] = nonce[4 + b] = (unsigned char)(n >> (8 * (COUNTER_SIZE - 1 - b)));
    int len = 0, tail = 0;
    if (EVP_EncryptInit_ex(seal_ctx, NULL, NULL, (const unsigned char *)PyBytes_AS_STRING(key), nonce) != 1 ||
        EVP_EncryptUpdate(seal_ctx, NULL, &len, (const unsigned char *)PyBytes_AS_STRING(aad), (int)PyBytes_GET_SIZE(aad)) != 1 ||
        EVP_EncryptUpdate(seal_ctx, out + COUNTER_SIZE, &len, (const unsigned char *)PyBytes_AS_STRING(data),
                          (int)PyBytes_GET_SIZE(data)) != 1 ||
        EVP_EncryptFinal_ex(seal_ctx, out + COUNTER_SIZE + len, &tail) != 1 ||
        len + tail != (int)PyBytes_GET_SIZE(data) ||
        EVP_CIPHER_CTX_ctrl(seal_ctx, EVP_CTRL_AEAD_GET_TAG, TAG_SIZE, out + COUNTER_SIZE + PyBytes_GET_SIZE(data)) != 1)
        goto done; /* not expected: the Python way seals it, with the same counter */
    PyObject *next;
    if (n < ~0ULL) {
        next = PyLong_FromUnsignedLongLong(n + 1);
    } else { /* the last counter: 2**64 after it, which the next seal refuses */
        PyObject *one = PyLong_FromLong(1);
        next = one == NULL ? NULL : PyNumber_Add(counter, one);
        Py_XDECREF(one);
    }
    if (next == NULL || PyObject_SetAttr(channel, counter_attr, next) < 0) {
        Py_XDECREF(next);
        result = -1;
        goto done;
    }
    Py_DECREF(next);
    *to = packed;
    packed = NULL;
    result = 0;
done:
    Py_XDECREF(packed);
    Py_DECREF(channel);
    Py_XDECREF(key);
    Py_XDECREF(aad);
    Py_XDECREF(outgoing);
    Py_XDECREF(counter);
    return result;
}

PyDoc_STRVAR(seal_fan_out_doc,
"seal_fan_out(fd, data, members, sender) -> (sent, failures)\n\n"
"As fan_out, for secure mode: each member but sender whose route has a\n"
"packed 'sealed_to' address gets data sealed with its key and its channel's\n"
"next counter (ocm/sealing.py), in one sendmmsg call per 256 recipients;\n"
"the others (another route, or a key used up) are written by their routes,\n"
"which seal. Returns as fan_out.");

static PyObject *seal_fan_out(PyObject *module, PyObject *args)
{
    (void)module;
    int fd;
    PyObject *data, *members, *sender;
    if (!PyArg_ParseTuple(args, "iO!O!O:seal_fan_out", &fd, &PyBytes_Type, &data, &PyList_Type, &members, &sender)) return NULL;
    if (PyBytes_GET_SIZE(data) > 65536) {
        PyErr_SetString(PyExc_ValueError, "seal_fan_out: a datagram is at most 65536 bytes");
        return NULL;
    }
    if (seal_ctx == NULL) {
        if ((seal_ctx = EVP_CIPHER_CTX_new()) == NULL ||
            EVP_EncryptInit_ex(seal_ctx, EVP_chacha20_poly1305(), NULL, NULL, NULL) != 1) {
            EVP_CIPHER_CTX_free(seal_ctx);
            seal_ctx = NULL;
            PyErr_SetString(PyExc_RuntimeError, "libcrypto has no ChaCha20-Poly1305");
            return NULL;
        }
    }
    size_t stride = (size_t)PyBytes_GET_SIZE(data) + COUNTER_SIZE + TAG_SIZE;
    Py_ssize_t size = PyList_GET_SIZE(members);
    unsigned capacity = size < 1 ? 1 : size > BATCH ? BATCH : (unsigned)size;
    /* this call's own buffers: an attribute lookup could run Python code that fans out again */
    unsigned char *sealed = PyMem_Malloc(capacity * stride);
    struct mmsghdr *msgs = PyMem_Calloc(capacity, sizeof *msgs);
    struct iovec *iov = PyMem_Malloc(capacity * sizeof *iov);
    PyObject **who = PyMem_Malloc(capacity * sizeof *who), **addrs = PyMem_Malloc(capacity * sizeof *addrs);
    unsigned count = 0;
    PyObject *failures = NULL;
    Py_ssize_t sent = 0;
    if (sealed == NULL || msgs == NULL || iov == NULL || who == NULL || addrs == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(members); i++) {
        PyObject *member = PyList_GET_ITEM(members, i);
        if (member == sender) continue;
        Py_INCREF(member);
        unsigned char *out = sealed + count * stride;
        PyObject *to = NULL;
        int status = seal_for(member, data, out, &to);
        if (status != 0) {
            int failed = status < 0 ? -1 : by_route(&failures, member, data, &sent);
            Py_DECREF(member);
            if (failed < 0) goto error;
            continue;
        }
        iov[count].iov_base = out;
        iov[count].iov_len = stride;
        struct msghdr *h = &msgs[count].msg_hdr;
        memset(h, 0, sizeof *h);
        h->msg_name = PyBytes_AS_STRING(to);
        h->msg_namelen = (socklen_t)PyBytes_GET_SIZE(to);
        h->msg_iov = &iov[count];
        h->msg_iovlen = 1;
        who[count] = member;
        addrs[count] = to;
        if (++count == capacity) {
            int status = send_batch(fd, msgs, who, addrs, count, &sent, &failures);
            count = 0;
            if (status < 0) goto error;
        }
    }
    if (count > 0) {
        int status = send_batch(fd, msgs, who, addrs, count, &sent, &failures);
        count = 0;
        if (status < 0) goto error;
    }
    PyMem_Free(sealed);
    PyMem_Free(msgs);
    PyMem_Free(iov);
    PyMem_Free(who);
    PyMem_Free(addrs);
    if (failures == NULL) return Py_BuildValue("(nO)", sent, Py_None);
    return Py_BuildValue("(nN)", sent, failures);
error:
    for (unsigned j = 0; j < count; j++) {
        Py_DECREF(addrs[j]);
        Py_DECREF(who[j]);
    }
    PyMem_Free(sealed);
    PyMem_Free(msgs);
    PyMem_Free(iov);
    PyMem_Free(who);
    PyMem_Free(addrs);
    Py_XDECREF(failures);
    return NULL;
}
#endif /* OCM_SEAL */

/* Datagrams per recvmmsg call, at most. */
#define RECV_MAX 256

PyDoc_STRVAR(recv_batch_doc,
"recv_batch(fd, count, size) -> list of (bytes, (host, port))\n\n"
"Read up to count (at most 256) waiting datagrams from socket fd in one\n"
"recvmmsg call, each into a size-byte buffer (a longer one arrives cut to\n"
"size bytes, as recvfrom gives it), with its source as recvfrom gives an\n"
"IPv4 one, or IPv6 without flow info and scope id. Empty when nothing waits;\n"
"OSError for any other error.");

static char *recv_buffers;      /* RECV_MAX * recv_size bytes, kept between calls */
static size_t recv_size;

static PyObject *address_of(const struct sockaddr_storage *from)
{
    char host[INET6_ADDRSTRLEN];
    int port;
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)from;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
    } else if (from->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)from;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
    } else {
        Py_RETURN_NONE; /* not from an IP socket: the checks drop it */
    }
    return Py_BuildValue("(si)", host, port);
}

static PyObject *recv_batch(PyObject *module, PyObject *args)
{
    (void)module;
    int fd, count;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "iin:recv_batch", &fd, &count, &size)) return NULL;
    if (count < 1 || count > RECV_MAX || size < 1 || size > 65536) {
        PyErr_SetString(PyExc_ValueError, "recv_batch: count must be 1..256 and size 1..65536");
        return NULL;
    }
    if (recv_size != (size_t)size) {
        char *buffers = PyMem_Realloc(recv_buffers, (size_t)RECV_MAX * (size_t)size);
        if (buffers == NULL) return PyErr_NoMemory();
        recv_buffers = buffers;
        recv_size = (size_t)size;
    }
    struct mmsghdr msgs[RECV_MAX];
    struct iovec iov[RECV_MAX];
    struct sockaddr_storage from[RECV_MAX];
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = recv_buffers + (size_t)i * recv_size;
        iov[i].iov_len = recv_size;
        memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof from[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(fd, msgs, (unsigned)count, MSG_DONTWAIT, NULL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *batch = PyList_New(n);
    if (batch == NULL) return NULL;
    for (int i = 0; i < n; i++) {
        /* msg_len is what was copied: a datagram longer than the buffer
         * (MSG_TRUNC) arrives cut to size bytes, as recvfrom cuts it */
        PyObject *data = PyBytes_FromStringAndSize(iov[i].iov_base, (Py_ssize_t)msgs[i].msg_len);
        PyObject *addr = data == NULL ? NULL : address_of(&from[i]);
        PyObject *item = addr == NULL ? NULL : PyTuple_Pack(2, data, addr);
        Py_XDECREF(data);
        Py_XDECREF(addr);
        if (item == NULL) {
            Py_DECREF(batch);
            return NULL;
        }
        PyList_SET_ITEM(batch, i, item);
    }
    return batch;
}

/*
 * The relay's common case in C (relay_batch): a whole recvmmsg batch read,
 * and each datagram that is a bound UDP member's valid chat, under its rate
 * limit, not muted, not too long, to a room without history on a node
 * without peers, relayed here: the checks of ocm/relay/protocol.py's
 * Relay._check and Relay._accepted, the same ones in the same order, and
 * the fan-out of Relay._fan_out. Measured at the assignment's load (perf,
 * 500 rooms x 10 members, 2 messages/s each), user space was 21% of the
 * server's samples with the Python path, 15% with this one (of which the
 * reactor's wake-ups, about 5 datagrams each, are a good part); the rest is
 * the kernel's sendmmsg, as in bench/crelay.c. bench/versus.py, two rounds:
 * CPU per delivered datagram 1.24x and 1.23x the C relay's (1.37x and
 * 1.38x before), find-max 1.25x and 0.94x (0.80x and 0.75x before).
 * Every other datagram, and any that fails a check this code does not
 * count itself, goes to Relay.datagramReceived in its turn (the batch keeps
 * its order), whose every rule then applies.
 * One call reads batch after batch until the socket is drained (or its
 * budget is spent), as bench/crelay.c does, with no return to Python in
 * between: at the assignment's load a batch held about 2 datagrams, and each
 * return (the port's loop, the clock, the arguments, the counters) cost
 * about as much as relaying them. Measured (ocmload --rate 2, 500 rooms x
 * 10, three interleaved rounds): 6.51, 6.37, 6.68 us of server CPU per
 * delivered datagram, against 7.65, 6.81, 6.94 with one batch a call
 * (36ff7fa) and 6.18, 4.87, 6.04 for bench/crelay.c --mmsg.
 */

/* The drops counted here, as Stats.dropped names them. */
enum { OVERSIZE, MALFORMED, UNKNOWN_TOKEN, WRONG_ROOM, DROPS };
static PyObject *drop_keys[DROPS];
static PyObject *received_attr, *relayed_attr, *rate_attr, *burst_attr, *peers_attr, *shared_attr, *zero;

#define MAX_DATAGRAM 4096  /* ocm/wire.py */
#define MAX_RELAYED 4094
#define CONTROL 0x00

struct relay_state {
    int fd;
    PyObject *now;       /* the batch's time, a float */
    double now_value;
    PyObject *tokens, *stats, *dropped, *rooms, *handle, *on_failures;
    int limits;          /* rate and burst are exact doubles (else chat goes to Python) */
    double rate, burst;
    int shared;          /* rooms.peers.shared: chat goes to Python */
    Py_ssize_t received, relayed, drops[DROPS]; /* not yet added to the Python counters */
};

/* An int or a float as the exact double Python's arithmetic would use; 0 if not so (no exception). */
static int exact_double(PyObject *o, double *out)
{
    if (PyFloat_CheckExact(o)) {
        *out = PyFloat_AS_DOUBLE(o);
        return 1;
    }
    if (PyLong_CheckExact(o)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred()) || v > (1LL << 53) || v < -(1LL << 53)) {
            PyErr_Clear();
            return 0;
        }
        *out = (double)v;
        return 1;
    }
    return 0;
}

/* Read what Python code may change: the rate limit and whether there are peers. -1 on error. */
static int refresh(struct relay_state *st)
{
    PyObject *rate = PyObject_GetAttr(st->rooms, rate_attr), *burst = rate == NULL ? NULL : PyObject_GetAttr(st->rooms, burst_attr);
    PyObject *peers = burst == NULL ? NULL : PyObject_GetAttr(st->rooms, peers_attr);
    PyObject *shared = peers == NULL ? NULL : PyObject_GetAttr(peers, shared_attr);
    int status = -1;
    if (shared != NULL) {
        int truth = PyObject_IsTrue(shared);
        if (truth >= 0) {
            st->shared = truth;
            st->limits = exact_double(rate, &st->rate) && exact_double(burst, &st->burst);
            status = 0;
        }
    }
    Py_XDECREF(rate);
    Py_XDECREF(burst);
    Py_XDECREF(peers);
    Py_XDECREF(shared);
    return status;
}

/* obj.name += n; -1 on error. */
static int add_to_attr(PyObject *obj, PyObject *name, Py_ssize_t n)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) return -1;
    PyObject *more = PyLong_FromSsize_t(n), *sum = more == NULL ? NULL : PyNumber_Add(value, more);
    int status = sum == NULL ? -1 : PyObject_SetAttr(obj, name, sum);
    Py_DECREF(value);
    Py_XDECREF(more);
    Py_XDECREF(sum);
    return status;
}

/* Add the counts kept here to stats (before any Python code runs, and at the end). -1 on error. */
static int flush(struct relay_state *st)
{
    if (st->received && add_to_attr(st->stats, received_attr, st->received) < 0) return -1;
    st->received = 0;
    if (st->relayed && add_to_attr(st->stats, relayed_attr, st->relayed) < 0) return -1;
    st->relayed = 0;
    for (int k = 0; k < DROPS; k++) {
        if (st->drops[k] == 0) continue;
        PyObject *value = PyDict_GetItemWithError(st->dropped, drop_keys[k]);
        if (value == NULL) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, drop_keys[k]);
            return -1;
        }
        PyObject *more = PyLong_FromSsize_t(st->drops[k]), *sum = more == NULL ? NULL : PyNumber_Add(value, more);
        int status = sum == NULL ? -1 : PyDict_SetItem(st->dropped, drop_keys[k], sum);
        Py_XDECREF(more);
        Py_XDECREF(sum);
        if (status < 0) return -1;
        st->drops[k] = 0;
    }
    return 0;
}

/* Whether a packed address (pack_address) is the datagram's source: family, IP and port. */
static int same_address(PyObject *packed, const struct sockaddr_storage *from)
{
    Py_ssize_t size = PyBytes_GET_SIZE(packed);
    if (from->ss_family == AF_INET && size == (Py_ssize_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, PyBytes_AS_STRING(packed), sizeof a);
        const struct sockaddr_in *b = (const struct sockaddr_in *)from;
        return a.sin_family == AF_INET && a.sin_port == b->sin_port && a.sin_addr.s_addr == b->sin_addr.s_addr;
    }
    if (from->ss_family == AF_INET6 && size == (Py_ssize_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        memcpy(&a, PyBytes_AS_STRING(packed), sizeof a);
        const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)from;
        return a.sin6_family == AF_INET6 && a.sin6_port == b->sin6_port && !memcmp(&a.sin6_addr, &b->sin6_addr, sizeof a.sin6_addr);
    }
    return 0;
}

/* Whether bytes.decode("utf-8") would succeed (ASCII checked here, the rest by Python's own decoder). */
static int valid_utf8(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, s + i, sizeof word);
        if (word & 0x8080808080808080ULL) break;
    }
    for (; i < n && s[i] < 0x80; i++) {
    }
    if (i == n) return 1;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)s, n, "strict");
    if (text == NULL) {
        PyErr_Clear(); /* Python's path decodes it again, and says why */
        return 0;
    }
    Py_DECREF(text);
    return 1;
}

/* A float of a slot as a double: 0 when it is not an exact number. */
static int slot_double(PyObject *obj, Py_ssize_t offset, double *out)
{
    PyObject *value = SLOT(obj, offset);
    return value != NULL && exact_double(value, out);
}

/*
 * The chat of a bound member: relayed here if every rule lets it through
 * unchanged. 0 relayed; 1 for Python's path (nothing changed yet); -1 error.
 */
static int relay_chat(struct relay_state *st, PyObject *member, PyObject *room, const unsigned char *msg, Py_ssize_t size)
{
    if (msg[0] == CONTROL || st->shared || !st->limits) return 1;
    PyObject *prefix = SLOT(member, m_prefix), *muted = SLOT(room, r_muted), *history = SLOT(room, r_history_size);
    PyObject *bound = SLOT(room, r_bound);
    if (prefix == NULL || !PyBytes_CheckExact(prefix) || PyBytes_GET_SIZE(prefix) + size > MAX_RELAYED) return 1;
    if (muted == NULL || !PyAnySet_CheckExact(muted) || PySet_GET_SIZE(muted) != 0) return 1;
    if (history == NULL || !PyLong_CheckExact(history)) return 1;
    long kept = PyLong_AsLong(history);
    if (kept != 0) {
        PyErr_Clear();
        return 1;
    }
    if (bound == NULL || !PyList_CheckExact(bound)) return 1;
    if (!valid_utf8(msg, size)) return 1;
    /* Rooms.allow_message: a token bucket of rate a second, burst deep */
    double allowance, at;
    if (!slot_double(member, m_allowance, &allowance) || !slot_double(member, m_allowance_at, &at)) return 1;
    allowance = allowance + (st->now_value - at) * st->rate;
    if (allowance > st->burst) allowance = st->burst;
    if (allowance < 1.0) return 1; /* rate_limited: Python's path counts it and tells the member */
    PyObject *left = PyFloat_FromDouble(allowance - 1.0);
    if (left == NULL) return -1;
    set_slot(member, m_allowance, left);
    Py_INCREF(st->now);
    set_slot(member, m_allowance_at, st->now);
    Py_INCREF(st->now);
    set_slot(member, m_last_seen, st->now);
    Py_INCREF(zero);
    set_slot(member, m_failures, zero);
    st->received++;
    /* out = member.prefix + message */
    char out[MAX_RELAYED];
    Py_ssize_t prefix_size = PyBytes_GET_SIZE(prefix);
    memcpy(out, PyBytes_AS_STRING(prefix), (size_t)prefix_size);
    memcpy(out + prefix_size, msg, (size_t)size);
    PyObject *data = NULL, *failures = NULL;
    Py_ssize_t sent = 0;
    Py_INCREF(bound);
    int status = fan_out_buffer(st->fd, out, prefix_size + size, &data, bound, member, &sent, &failures);
    Py_DECREF(bound);
    Py_XDECREF(data);
    st->relayed += sent;
    if (status == 0 && failures != NULL) { /* Relay._delivery_failed, after the counters */
        PyObject *result = flush(st) < 0 ? NULL : PyObject_CallOneArg(st->on_failures, failures);
        Py_XDECREF(result);
        status = result == NULL || refresh(st) < 0 ? -1 : 0;
    }
    Py_XDECREF(failures);
    return status;
}

/* One datagram: 0 done here (relayed or counted); 1 for Python's path; -1 error. */
static int relay_one(struct relay_state *st, const unsigned char *d, Py_ssize_t len, const struct sockaddr_storage *from)
{
    /* Relay._check: size, header, token, room (counted here), then the source */
    int drop = -1;
    PyObject *member = NULL;
    Py_ssize_t start = 0;
    if (len > MAX_DATAGRAM) {
        drop = OVERSIZE;
    } else if (len < 2 || len < (start = 2 + d[0] + d[1])) {
        drop = MALFORMED;
    } else {
        PyObject *token = PyBytes_FromStringAndSize((const char *)d + 2 + d[0], d[1]);
        if (token == NULL) return -1;
        member = PyDict_GetItemWithError(st->tokens, token);
        Py_DECREF(token);
        if (member == NULL) {
            if (PyErr_Occurred()) return -1;
            drop = UNKNOWN_TOKEN;
        }
    }
    if (drop < 0) {
        if (Py_TYPE(member) != member_type) return 1;
        PyObject *room = SLOT(member, m_room), *name = room == NULL ? NULL : SLOT(room, r_name_bytes);
        if (room == NULL || Py_TYPE(room) != room_type || name == NULL || !PyBytes_CheckExact(name)) return 1;
        if (PyBytes_GET_SIZE(name) != d[0] || memcmp(PyBytes_AS_STRING(name), d + 2, d[0])) {
            drop = WRONG_ROOM;
        } else {
            /* a UDP member's packed address is set with its source when it binds, and cleared when it moves */
            PyObject *packed = SLOT(member, m_sockaddr);
            if (packed == NULL || !PyBytes_CheckExact(packed) || !same_address(packed, from)) return 1;
            if (start == len) { /* a keepalive (Relay._accepted) */
                Py_INCREF(st->now);
                set_slot(member, m_last_seen, st->now);
                Py_INCREF(zero);
                set_slot(member, m_failures, zero);
                st->received++;
                return 0;
            }
            Py_INCREF(member);
            Py_INCREF(room);
            int status = relay_chat(st, member, room, d + start, len - start);
            Py_DECREF(room);
            Py_DECREF(member);
            return status;
        }
    }
    st->received++;
    st->drops[drop]++;
    return 0;
}

/* Datagrams read into relay_batch's buffers (RECV_MAX * relay_size bytes): kept between calls, unless a call runs inside another. */
static char *relay_buffers;
static size_t relay_size;
static int relay_depth;

PyDoc_STRVAR(relay_batch_doc,
"relay_batch(fd, count, size, budget, seconds, tokens, stats, rooms, handle,\n"
"            on_failures) -> int\n\n"
"Read datagrams of at most size bytes from socket fd, up to count (at most\n"
"256) a recvmmsg call, until a call finds none or budget datagrams are read;\n"
"relay each that ocm/relay/protocol.py's Relay would relay unchanged at the\n"
"time seconds() gives (called once a call) to its room through sendmmsg;\n"
"hand each other one, in its turn, to handle(data, (host, port)), the\n"
"relay's own path. tokens is Rooms.tokens, stats the Stats it counts into,\n"
"rooms the Rooms (rate, burst, peers.shared), on_failures(failures) deals\n"
"with failed sends as Relay._delivery_failed. Needs use_types. Returns the\n"
"number of datagrams read (0 when nothing waits); OSError when reading fails\n"
"(what was read before is relayed and counted).");

/* One recvmmsg call into msgs, and each datagram read relayed or handed on; the number read (0: drained), -1 on error. */
static int relay_recv(struct relay_state *st, PyObject *seconds, struct mmsghdr *msgs, struct sockaddr_storage *from, int count)
{
    int n = recvmmsg(st->fd, msgs, (unsigned)count, MSG_DONTWAIT, NULL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    Py_XDECREF(st->now);
    if ((st->now = PyObject_CallNoArgs(seconds)) == NULL) return -1;
    st->now_value = PyFloat_AsDouble(st->now);
    if (st->now_value == -1.0 && PyErr_Occurred()) return -1;
    if (refresh(st) < 0) return -1;
    for (int i = 0; i < n; i++) {
        const unsigned char *d = (const unsigned char *)msgs[i].msg_hdr.msg_iov->iov_base;
        int status = relay_one(st, d, (Py_ssize_t)msgs[i].msg_len, &from[i]);
        if (status < 0) return -1;
        if (status == 0) continue;
        /* Relay.datagramReceived, after the counters: it counts its own */
        if (flush(st) < 0) return -1;
        PyObject *data = PyBytes_FromStringAndSize((const char *)d, (Py_ssize_t)msgs[i].msg_len);
        PyObject *addr = data == NULL ? NULL : address_of(&from[i]);
        PyObject *handled = addr == NULL ? NULL : PyObject_CallFunctionObjArgs(st->handle, data, addr, NULL);
        Py_XDECREF(data);
        Py_XDECREF(addr);
        if (handled == NULL) return -1;
        Py_DECREF(handled);
        if (refresh(st) < 0) return -1;
    }
    return flush(st) < 0 ? -1 : n;
}

static PyObject *relay_batch(PyObject *module, PyObject *args)
{
    (void)module;
    int count;
    Py_ssize_t size, budget;
    PyObject *seconds;
    struct relay_state st;
    memset(&st, 0, sizeof st);
    if (!PyArg_ParseTuple(args, "iinnOO!OOOO:relay_batch", &st.fd, &count, &size, &budget, &seconds, &PyDict_Type, &st.tokens,
                          &st.stats, &st.rooms, &st.handle, &st.on_failures))
        return NULL;
    if (count < 1 || count > RECV_MAX || size < 1 || size > 65536 || budget < 1) {
        PyErr_SetString(PyExc_ValueError, "relay_batch: count must be 1..256, size 1..65536 and budget at least 1");
        return NULL;
    }
    if (!PyCallable_Check(seconds)) {
        PyErr_SetString(PyExc_TypeError, "relay_batch: seconds must be callable");
        return NULL;
    }
    if (member_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "relay_batch: use_types was not called");
        return NULL;
    }
    st.dropped = PyObject_GetAttrString(st.stats, "dropped");
    if (st.dropped == NULL) return NULL;
    if (!PyDict_Check(st.dropped)) {
        PyErr_SetString(PyExc_TypeError, "relay_batch: stats.dropped is not a dict");
        Py_DECREF(st.dropped);
        return NULL;
    }
    char *buffers;
    if (relay_depth > 0) { /* a handler read a port: this call's own buffers */
        if ((buffers = PyMem_Malloc((size_t)count * (size_t)size)) == NULL) {
            Py_DECREF(st.dropped);
            return PyErr_NoMemory();
        }
    } else {
        if (relay_size != (size_t)size) {
            char *more = PyMem_Realloc(relay_buffers, (size_t)RECV_MAX * (size_t)size);
            if (more == NULL) {
                Py_DECREF(st.dropped);
                return PyErr_NoMemory();
            }
            relay_buffers = more;
            relay_size = (size_t)size;
        }
        buffers = relay_buffers;
    }
    struct mmsghdr msgs[RECV_MAX];
    struct iovec iov[RECV_MAX];
    struct sockaddr_storage from[RECV_MAX];
    relay_depth++;
    Py_ssize_t total = 0;
    int n;
    do {
        int want = budget - total < count ? (int)(budget - total) : count;
        for (int i = 0; i < want; i++) { /* recvmmsg changed the lengths */
            iov[i].iov_base = buffers + (size_t)i * (size_t)size;
            iov[i].iov_len = (size_t)size;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof from[i];
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        n = relay_recv(&st, seconds, msgs, from, want);
        if (n > 0) total += n;
    } while (n > 0 && total < budget);
    relay_depth--;
    if (buffers != relay_buffers) PyMem_Free(buffers);
    Py_XDECREF(st.now);
    Py_DECREF(st.dropped);
    return n < 0 ? NULL : PyLong_FromSsize_t(total);
}

static PyMethodDef methods[] = {
    {"pack_address", pack_address, METH_VARARGS, pack_address_doc},
    {"fan_out", fan_out, METH_VARARGS, fan_out_doc},
    {"recv_batch", recv_batch, METH_VARARGS, recv_batch_doc},
    {"use_types", use_types, METH_VARARGS, use_types_doc},
    {"relay_batch", relay_batch, METH_VARARGS, relay_batch_doc},
#ifdef OCM_SEAL
    {"seal_fan_out", seal_fan_out, METH_VARARGS, seal_fan_out_doc},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ocm_fanout", "The relay's fan-out loop in C (see ocm/relay/fanout.py).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ocm_fanout(void)
{
    if ((sockaddr_attr = PyUnicode_InternFromString("sockaddr")) == NULL ||
        (route_attr = PyUnicode_InternFromString("route")) == NULL ||
        (send_attr = PyUnicode_InternFromString("send")) == NULL ||
        (received_attr = PyUnicode_InternFromString("received")) == NULL ||
        (relayed_attr = PyUnicode_InternFromString("relayed")) == NULL ||
        (rate_attr = PyUnicode_InternFromString("rate")) == NULL ||
        (burst_attr = PyUnicode_InternFromString("burst")) == NULL ||
        (peers_attr = PyUnicode_InternFromString("peers")) == NULL ||
        (shared_attr = PyUnicode_InternFromString("shared")) == NULL ||
        (drop_keys[OVERSIZE] = PyUnicode_InternFromString("oversize")) == NULL ||
        (drop_keys[MALFORMED] = PyUnicode_InternFromString("malformed")) == NULL ||
        (drop_keys[UNKNOWN_TOKEN] = PyUnicode_InternFromString("unknown_token")) == NULL ||
        (drop_keys[WRONG_ROOM] = PyUnicode_InternFromString("wrong_room")) == NULL ||
        (zero = PyLong_FromLong(0)) == NULL)
        return NULL;
#ifdef OCM_SEAL
    if ((sealed_to_attr = PyUnicode_InternFromString("sealed_to")) == NULL ||
        (channel_attr = PyUnicode_InternFromString("channel")) == NULL ||
        (key_attr = PyUnicode_InternFromString("key")) == NULL ||
        (aad_attr = PyUnicode_InternFromString("aad")) == NULL ||
        (outgoing_attr = PyUnicode_InternFromString("outgoing")) == NULL ||
        (counter_attr = PyUnicode_InternFromString("counter")) == NULL)
        return NULL;
#endif
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && PyModule_AddIntConstant(module, "API", OCM_FANOUT_API) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
