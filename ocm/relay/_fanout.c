/*
 * _ocm_fanout: the relay's fan-out loop in C.
 *
 * Why: at the assignment's load almost all of the server's time is the
 * sendto of the fan-out, one call per recipient. Measured to the same sink
 * sockets, a sendto costs 3.4 us from Python (socket.sendto parses its
 * arguments and address tuple and releases and retakes the GIL on every
 * call) and 2.3 us from this loop. The addresses are packed once, when a
 * member binds (pack_address), so the loop does nothing but the system call.
 *
 * Optional: when this module cannot be built, ocm/relay/fanout.py runs the same
 * loop in Python. Nothing here blocks (the socket is non-blocking and
 * MSG_DONTWAIT is passed), so the GIL is kept.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

static PyObject *sockaddr_attr; /* "sockaddr", interned */

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

PyDoc_STRVAR(fan_out_doc,
"fan_out(fd, data, members, sender) -> (sent, failures)\n\n"
"Send data from socket fd to the packed address (its 'sockaddr' attribute)\n"
"of every object in the list members except sender. failures is None, or a\n"
"list of (member, errno) for each send that failed, errno 0 for a member\n"
"with no packed address (the caller sends those itself).");

static PyObject *fan_out(PyObject *module, PyObject *args)
{
    (void)module;
    int fd;
    Py_buffer data;
    PyObject *members, *sender;
    if (!PyArg_ParseTuple(args, "iy*O!O:fan_out", &fd, &data, &PyList_Type, &members, &sender)) return NULL;
    PyObject *failures = NULL;
    Py_ssize_t sent = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(members); i++) {
        PyObject *member = PyList_GET_ITEM(members, i);
        if (member == sender) continue;
        Py_INCREF(member); /* held while in use, whatever the attribute lookup does */
        PyObject *sa = PyObject_GetAttr(member, sockaddr_attr);
        if (sa == NULL) {
            Py_DECREF(member);
            goto error;
        }
        int err = 0;
        if (PyBytes_Check(sa)) {
            if (sendto(fd, data.buf, (size_t)data.len, MSG_DONTWAIT, (const struct sockaddr *)PyBytes_AS_STRING(sa),
                       (socklen_t)PyBytes_GET_SIZE(sa)) >= 0) {
                Py_DECREF(sa);
                Py_DECREF(member);
                sent++;
                continue;
            }
            err = errno;
        }
        Py_DECREF(sa);
        PyObject *item = NULL;
        if (failures != NULL || (failures = PyList_New(0)) != NULL) item = Py_BuildValue("(Oi)", member, err);
        Py_DECREF(member);
        if (item == NULL) goto error;
        int appended = PyList_Append(failures, item);
        Py_DECREF(item);
        if (appended < 0) goto error;
    }
    PyBuffer_Release(&data);
    if (failures == NULL) return Py_BuildValue("(nO)", sent, Py_None);
    return Py_BuildValue("(nN)", sent, failures);
error:
    PyBuffer_Release(&data);
    Py_XDECREF(failures);
    return NULL;
}

static PyMethodDef methods[] = {
    {"pack_address", pack_address, METH_VARARGS, pack_address_doc},
    {"fan_out", fan_out, METH_VARARGS, fan_out_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ocm_fanout", "The relay's fan-out loop in C (see ocm/relay/fanout.py).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ocm_fanout(void)
{
    sockaddr_attr = PyUnicode_InternFromString("sockaddr");
    if (sockaddr_attr == NULL) return NULL;
    return PyModule_Create(&module_def);
}
