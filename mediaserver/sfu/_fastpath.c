/* The ends of the packet path in C: SRTP unprotect of what arrives (Input) and its RTP
 * header parsed (parse_rtp); writing the RTP header, SRTP protect and send of what is
 * forwarded (Output).
 *
 * Per forwarded copy the Python path packed a header with struct, concatenated it with the
 * payload, copied the packet into pylibsrtp's buffer through cffi, sliced the result out as
 * a new bytes object, and handed it to uvloop's transport, which converted the address
 * tuple on every call. Here one call does all of it in a buffer the object owns:
 *
 *   Output.send_rtp(marker, pt, seq, ts, ssrc, level_id, level, ast_id, ast24,
 *                   buffer, start, end) -> int
 *
 * libsrtp is called through the function pointers of the library aiortc already loaded
 * (pylibsrtp's), on aiortc's own session: there is one libsrtp in the process and one
 * sequence of SRTP indexes per session, whichever path protects a packet. The pointers
 * come from Python (cffi's addressof), so this file links against nothing but libc.
 *
 * The socket is a dup() of the ICE transport's: a closed original can never make the
 * number name someone else's socket here. Sends are non-blocking; a full socket buffer is
 * a dropped datagram (counted by the caller), as in the kernel's own queue, never a queue
 * without bound in the process.
 *
 * Return values of the send methods: the plain packet's length when sent; 0 when there is
 * no session or destination yet (the caller takes its own path); ERR_SRTP when libsrtp
 * refused; ERR_SOCKET when the kernel did (EAGAIN, ENOBUFS, ...); ERR_SIZE when the packet
 * would not fit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <linux/sockios.h>
#include <unistd.h>

/* RTP packets every Output sent (the latency sampler's "was it forwarded"). */
static unsigned long long sent_total;

#define BUFFER_SIZE 4096
#define TRAILER_ROOM 256 /* >= libsrtp's SRTP_MAX_TRAILER_LEN and SRTCP's (148) */
#define MAX_PLAIN (BUFFER_SIZE - TRAILER_ROOM)

#define ERR_SRTP (-1)
#define ERR_SOCKET (-2)
#define ERR_SIZE (-3)

typedef int (*srtp_fn)(void *ctx, void *packet, int *length);

typedef struct {
    PyObject_HEAD
    void *ctx;
    srtp_fn protect;
    srtp_fn protect_rtcp;
    PyObject *keep; /* the Python object that owns ctx */
    int fd;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    unsigned char buf[BUFFER_SIZE];
} Output;

static void
output_close_fd(Output *self)
{
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
}

static int
Output_init(Output *self, PyObject *args, PyObject *kwds)
{
    if (!PyArg_ParseTuple(args, ":Output"))
        return -1;
    self->ctx = NULL;
    self->protect = self->protect_rtcp = NULL;
    Py_CLEAR(self->keep);
    output_close_fd(self);
    self->addrlen = 0;
    return 0;
}

static PyObject *
Output_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Output *self = (Output *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->fd = -1;
    return (PyObject *)self;
}

static void
Output_dealloc(Output *self)
{
    output_close_fd(self);
    Py_CLEAR(self->keep);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* (owner, ctx, rtp_fn, rtcp_fn) as Python passes a libsrtp session: the addresses as
 * integers, none of them 0. */
static int
parse_session(PyObject *args, const char *format, PyObject **keep, void **ctx,
              srtp_fn *rtp_fn, srtp_fn *rtcp_fn)
{
    unsigned long long c, f, g;
    if (!PyArg_ParseTuple(args, format, keep, &c, &f, &g))
        return -1;
    if (!c || !f || !g) {
        PyErr_SetString(PyExc_ValueError, "null SRTP context or function");
        return -1;
    }
    *ctx = (void *)(uintptr_t)c;
    *rtp_fn = (srtp_fn)(uintptr_t)f;
    *rtcp_fn = (srtp_fn)(uintptr_t)g;
    return 0;
}

static PyObject *
Output_set_srtp(Output *self, PyObject *args)
{
    PyObject *keep;
    void *ctx;
    srtp_fn protect, protect_rtcp;
    if (parse_session(args, "OKKK:set_srtp", &keep, &ctx, &protect, &protect_rtcp) < 0)
        return NULL;
    Py_INCREF(keep);
    Py_XSETREF(self->keep, keep);
    self->ctx = ctx;
    self->protect = protect;
    self->protect_rtcp = protect_rtcp;
    Py_RETURN_NONE;
}

/* A numeric IPv4 or IPv6 ``host`` and a ``port`` (0-65535) into ``sa`` and ``*len``: 1, or 0
 * if either is not one (no exception set: the caller says which). */
static int
sockaddr_of(const char *host, int port, struct sockaddr_storage *sa, socklen_t *len)
{
    if (port < 0 || port > 65535)
        return 0;
    memset(sa, 0, sizeof(*sa));
    struct sockaddr_in *v4 = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)sa;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof(*v4);
        return 1;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*v6);
        return 1;
    }
    return 0;
}

static PyObject *
Output_set_destination(Output *self, PyObject *args)
{
    int fd, port;
    const char *host;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    if (!PyArg_ParseTuple(args, "isi:set_destination", &fd, &host, &port))
        return NULL;
    if (port <= 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return NULL;
    }
    if (!sockaddr_of(host, port, &addr, &addrlen)) {
        PyErr_Format(PyExc_ValueError, "not a numeric address: %.64s", host);
        return NULL;
    }
    int copy = dup(fd);
    if (copy < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    output_close_fd(self);
    self->fd = copy;
    self->addr = addr;
    self->addrlen = addrlen;
    Py_RETURN_NONE;
}

static PyObject *
Output_clear(Output *self, PyObject *Py_UNUSED(ignored))
{
    output_close_fd(self);
    self->addrlen = 0;
    Py_RETURN_NONE;
}

static PyObject *
Output_get_ready(Output *self, void *closure)
{
    return PyBool_FromLong(self->fd >= 0 && self->ctx != NULL);
}

/* Protect self->buf[0:length] in place and send it. */
static long
output_finish(Output *self, int length, srtp_fn fn)
{
    int n = length;
    if (fn(self->ctx, self->buf, &n) != 0)
        return ERR_SRTP;
    if (sendto(self->fd, self->buf, (size_t)n, 0, (struct sockaddr *)&self->addr,
               self->addrlen) < 0)
        return ERR_SOCKET;
    if (fn != self->protect_rtcp)
        sent_total++;
    return length;
}

static int
as_uint(PyObject *o, unsigned long *out)
{
    unsigned long v = PyLong_AsUnsignedLongMask(o);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

static inline void
put16(unsigned char *p, unsigned long v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void
put32(unsigned char *p, unsigned long v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Write the header (see send_rtp) and the payload into the buffer, protect, send. The
 * output must be ready and the ids valid (0..14). */
static long
output_rtp(Output *self, int marker, unsigned long pt, unsigned long seq, unsigned long ts,
           unsigned long ssrc, unsigned long level_id, unsigned long level,
           unsigned long ast_id, unsigned long ast24, const unsigned char *payload,
           Py_ssize_t payload_len)
{
    unsigned char *b = self->buf;
    Py_ssize_t header = 12;
    b[0] = (ast_id || level_id) ? 0x90 : 0x80;
    b[1] = (unsigned char)((marker ? 0x80 : 0) | (pt & 0x7F));
    put16(b + 2, seq);
    put32(b + 4, ts);
    put32(b + 8, ssrc);
    if (ast_id && !level_id) {
        put16(b + 12, 0xBEDE);
        put16(b + 14, 1);
        put32(b + 16, ((((ast_id << 4) | 2) << 24) | (ast24 & 0xFFFFFF)) & 0xFFFFFFFFUL);
        header = 20;
    }
    else if (!ast_id && level_id) {
        put16(b + 12, 0xBEDE);
        put16(b + 14, 1);
        b[16] = (unsigned char)(level_id << 4);
        b[17] = (unsigned char)level;
        b[18] = b[19] = 0;
        header = 20;
    }
    else if (ast_id) {
        put16(b + 12, 0xBEDE);
        put16(b + 14, 2);
        b[16] = (unsigned char)(level_id << 4);
        b[17] = (unsigned char)level;
        put32(b + 18, ((((ast_id << 4) | 2) << 24) | (ast24 & 0xFFFFFF)) & 0xFFFFFFFFUL);
        b[22] = b[23] = 0;
        header = 24;
    }
    Py_ssize_t length = header + payload_len;
    if (length > MAX_PLAIN)
        return ERR_SIZE;
    memcpy(b + header, payload, (size_t)payload_len);
    return output_finish(self, (int)length, self->protect);
}

/* send_rtp(marker, pt, seq, ts, ssrc, level_id, level, ast_id, ast24, buffer, start, end)
 *
 * Header as mediaserver.sfu.rtp.build_rtp writes it for these one-byte extensions, each
 * id 1..14 or 0 for "not negotiated": an audio level (one byte) then abs-send-time, either
 * alone, or no extension at all. The payload is buffer[start:end]. */
static PyObject *
Output_send_rtp(Output *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long pt, seq, ts, ssrc, level_id, level, ast_id, ast24;
    Py_ssize_t start, end;
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "send_rtp takes 12 arguments");
        return NULL;
    }
    int marker = PyObject_IsTrue(args[0]);
    if (marker < 0 || as_uint(args[1], &pt) || as_uint(args[2], &seq) ||
        as_uint(args[3], &ts) || as_uint(args[4], &ssrc) || as_uint(args[5], &level_id) ||
        as_uint(args[6], &level) || as_uint(args[7], &ast_id) || as_uint(args[8], &ast24))
        return NULL;
    start = PyLong_AsSsize_t(args[10]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    end = PyLong_AsSsize_t(args[11]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    if (level_id > 14 || ast_id > 14) {
        PyErr_SetString(PyExc_ValueError, "extension ids must be 0 (none) or 1..14");
        return NULL;
    }
    if (self->fd < 0 || self->ctx == NULL)
        return PyLong_FromLong(0);

    Py_buffer view;
    if (PyObject_GetBuffer(args[9], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (start < 0 || end < start || end > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "payload bounds outside the buffer");
        return NULL;
    }
    long result = output_rtp(self, marker, pt, seq, ts, ssrc, level_id, level, ast_id, ast24,
                             (const unsigned char *)view.buf + start, end - start);
    PyBuffer_Release(&view);
    return PyLong_FromLong(result);
}

static PyObject *
output_send_built(Output *self, PyObject *data, int rtcp)
{
    if (self->fd < 0 || self->ctx == NULL)
        return PyLong_FromLong(0);
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len > MAX_PLAIN) {
        PyBuffer_Release(&view);
        return PyLong_FromLong(ERR_SIZE);
    }
    int length = (int)view.len;
    memcpy(self->buf, view.buf, (size_t)length);
    PyBuffer_Release(&view);
    return PyLong_FromLong(
        output_finish(self, length, rtcp ? self->protect_rtcp : self->protect));
}

static PyObject *
Output_send_packet(Output *self, PyObject *data)
{
    return output_send_built(self, data, 0);
}

static PyObject *
Output_send_rtcp(Output *self, PyObject *data)
{
    return output_send_built(self, data, 1);
}

static PyMethodDef Output_methods[] = {
    {"set_srtp", (PyCFunction)Output_set_srtp, METH_VARARGS,
     "set_srtp(owner, ctx, protect, protect_rtcp): libsrtp context and functions as "
     "addresses; owner is kept alive while they are used."},
    {"set_destination", (PyCFunction)Output_set_destination, METH_VARARGS,
     "set_destination(fd, host, port): send on a dup of fd to a numeric address."},
    {"clear", (PyCFunction)Output_clear, METH_NOARGS,
     "Forget the destination and close the socket copy; sends return 0 until one is set."},
    {"send_rtp", (PyCFunction)(void (*)(void))Output_send_rtp, METH_FASTCALL,
     "send_rtp(marker, pt, seq, ts, ssrc, level_id, level, ast_id, ast24, buffer, start, "
     "end) -> int"},
    {"send_packet", (PyCFunction)Output_send_packet, METH_O,
     "send_packet(rtp) -> int: protect and send a whole RTP packet."},
    {"send_rtcp", (PyCFunction)Output_send_rtcp, METH_O,
     "send_rtcp(rtcp) -> int: protect and send a compound RTCP packet."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Output_getset[] = {
    {"ready", (getter)Output_get_ready, NULL, "a session and a destination are set", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject OutputType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mediaserver.sfu._fastpath.Output",
    .tp_basicsize = sizeof(Output),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SRTP-protect and send RTP/RTCP to one peer (see the module's comment).",
    .tp_new = Output_new,
    .tp_init = (initproc)Output_init,
    .tp_dealloc = (destructor)Output_dealloc,
    .tp_methods = Output_methods,
    .tp_getset = Output_getset,
};

/* -- receiving ------------------------------------------------------------------------
 *
 * Input.unprotect(datagram) -> bytes | None: SRTP (or, with unprotect_rtcp, SRTCP)
 * unprotect in the object's own buffer; None when libsrtp refuses the datagram (not
 * authentic, a replay, too short) or it is longer than any packet we accept. */

typedef struct {
    PyObject_HEAD
    void *ctx;
    srtp_fn unprotect;
    srtp_fn unprotect_rtcp;
    PyObject *keep;
    unsigned char buf[BUFFER_SIZE];
} Input;

static PyObject *
Input_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *keep;
    void *ctx;
    srtp_fn unprotect, unprotect_rtcp;
    if (parse_session(args, "OKKK:Input", &keep, &ctx, &unprotect, &unprotect_rtcp) < 0)
        return NULL;
    Input *self = (Input *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(keep);
    self->keep = keep;
    self->ctx = ctx;
    self->unprotect = unprotect;
    self->unprotect_rtcp = unprotect_rtcp;
    return (PyObject *)self;
}

static void
Input_dealloc(Input *self)
{
    Py_CLEAR(self->keep);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
input_run(Input *self, PyObject *data, srtp_fn fn)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len > BUFFER_SIZE) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    int n = (int)view.len;
    memcpy(self->buf, view.buf, (size_t)n);
    PyBuffer_Release(&view);
    if (fn(self->ctx, self->buf, &n) != 0 || n < 0 || n > BUFFER_SIZE)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)self->buf, n);
}

static PyObject *
Input_unprotect(Input *self, PyObject *data)
{
    return input_run(self, data, self->unprotect);
}

static PyObject *
Input_unprotect_rtcp(Input *self, PyObject *data)
{
    return input_run(self, data, self->unprotect_rtcp);
}

static PyMethodDef Input_methods[] = {
    {"unprotect", (PyCFunction)Input_unprotect, METH_O,
     "unprotect(srtp) -> bytes | None (None: refused by libsrtp, or too long)"},
    {"unprotect_rtcp", (PyCFunction)Input_unprotect_rtcp, METH_O,
     "unprotect_rtcp(srtcp) -> bytes | None"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject InputType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mediaserver.sfu._fastpath.Input",
    .tp_basicsize = sizeof(Input),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Input(owner, ctx, unprotect, unprotect_rtcp): SRTP/SRTCP unprotect on one "
              "libsrtp session (addresses as integers; owner is kept alive).",
    .tp_new = Input_new,
    .tp_dealloc = (destructor)Input_dealloc,
    .tp_methods = Input_methods,
};

/* -- parsing ---------------------------------------------------------------------------
 *
 * parse_rtp(data) -> RtpPacket | None, the same packets as mediaserver.sfu.rtp's Python
 * parser (whose rules the comments there give), made as instances of its RtpPacket class:
 * set_packet_class() hands over the class and the Python parser, and the slots' offsets
 * are read once from the class's member descriptors. Anything but bytes goes to the Python
 * parser. */

static const char *const SLOT_NAMES[] = {
    "data", "marker", "payload_type", "sequence_number", "timestamp", "ssrc",
    "csrc_count", "payload_offset", "payload_end", "extensions",
};
enum { S_DATA, S_MARKER, S_PT, S_SEQ, S_TS, S_SSRC, S_CC, S_START, S_END, S_EXT, N_SLOTS };

/* The offset of a __slots__ member of a class (its member descriptor's). */
static int
member_offset(PyObject *cls, const char *name, Py_ssize_t *out, char *native)
{
    PyObject *descr = PyObject_GetAttrString(cls, name);
    if (descr == NULL)
        return -1;
    int type = Py_IS_TYPE(descr, &PyMemberDescr_Type)
                   ? ((PyMemberDescrObject *)descr)->d_member->type
                   : -1;
    int ok = type == T_OBJECT_EX || (native != NULL && type == T_LONGLONG);
    if (ok) {
        *out = ((PyMemberDescrObject *)descr)->d_member->offset;
        if (native != NULL)
            *native = type == T_LONGLONG;
    }
    Py_DECREF(descr);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s is not a __slots__ member%s", name,
                     native != NULL ? " nor a native integer field" : "");
        return -1;
    }
    return 0;
}

static PyTypeObject *packet_type = NULL;
static PyObject *python_parser = NULL;
static Py_ssize_t slot_offset[N_SLOTS];

static PyObject *
set_packet_class(PyObject *module, PyObject *args)
{
    PyObject *cls, *fallback;
    Py_ssize_t offsets[N_SLOTS];
    if (!PyArg_ParseTuple(args, "O!O:set_packet_class", &PyType_Type, &cls, &fallback))
        return NULL;
    for (int i = 0; i < N_SLOTS; i++)
        if (member_offset(cls, SLOT_NAMES[i], &offsets[i], NULL) < 0)
            return NULL;
    memcpy(slot_offset, offsets, sizeof(offsets));
    Py_INCREF(cls);
    Py_XSETREF(packet_type, (PyTypeObject *)cls);
    Py_INCREF(fallback);
    Py_XSETREF(python_parser, fallback);
    Py_RETURN_NONE;
}

static inline unsigned
get16(const unsigned char *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

static inline unsigned long
get32(const unsigned char *p)
{
    return ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) |
           ((unsigned long)p[2] << 8) | p[3];
}

static int
put_extension(PyObject *ext, PyObject *data, long xid, Py_ssize_t start, Py_ssize_t end)
{
    PyObject *key = PyLong_FromLong(xid);
    if (key == NULL)
        return -1;
    PyObject *value =
        PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + start, end - start);
    if (value == NULL) {
        Py_DECREF(key);
        return -1;
    }
    int rc = PyDict_SetItem(ext, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return rc;
}

/* The next element of a header extension block ending at ``end`` (RFC 8285, one-byte
 * or two-byte form) from *pos: 1 with its id and value bounds, *pos moved past it; 0 at
 * the end or at a malformed element (which ends the block: what was read is kept). */
static int
ext_next(const unsigned char *d, Py_ssize_t *pos, Py_ssize_t end, int one_byte, long *xid,
         Py_ssize_t *vstart, Py_ssize_t *vend)
{
    while (*pos < end) {
        Py_ssize_t p = *pos;
        unsigned b = d[p];
        if (one_byte) {
            if (b < 0x10 || b >= 0xF0) {
                if (b)
                    return 0; /* id 15: stop; id 0 with a length: invalid */
                *pos = p + 1; /* padding */
                continue;
            }
            *xid = (long)(b >> 4);
            *vstart = p + 1;
            *vend = p + 2 + (b & 0x0F);
        }
        else {
            if (b == 0) {
                *pos = p + 1;
                continue;
            }
            if (p + 2 > end)
                return 0;
            *xid = (long)b;
            *vstart = p + 2;
            *vend = p + 2 + d[p + 1];
        }
        if (*vend > end)
            return 0;
        *pos = *vend;
        return 1;
    }
    return 0;
}

/* The extension block data[pos:end] into ext; -1 only on a Python error. */
static int
parse_extensions(PyObject *ext, PyObject *data, Py_ssize_t pos, Py_ssize_t end, int one_byte)
{
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    long xid;
    Py_ssize_t vstart, vend;
    while (ext_next(d, &pos, end, one_byte, &xid, &vstart, &vend))
        if (put_extension(ext, data, xid, vstart, vend) < 0)
            return -1;
    return 0;
}

/* An RTP header as parse_rtp reads it, without the Python objects. */
typedef struct {
    Py_ssize_t start, end, ext_start, ext_end;
    unsigned long ts, ssrc;
    unsigned seq, cc;
    int pt, marker, one_byte, has_ext;
} Head;

/* 1 and the header of d[:n] if parse_rtp would make a packet of it, else 0. */
static int
parse_head(const unsigned char *d, Py_ssize_t n, Head *h)
{
    if (n < 12 || (d[0] & 0xC0) != 0x80)
        return 0;
    h->cc = d[0] & 0x0F;
    Py_ssize_t pos = 12 + 4 * (Py_ssize_t)h->cc;
    if (pos > n)
        return 0;
    h->ext_start = h->ext_end = 0;
    h->one_byte = h->has_ext = 0;
    if (d[0] & 0x10) {
        if (pos + 4 > n)
            return 0;
        unsigned profile = get16(d + pos);
        h->ext_start = pos + 4;
        h->ext_end = h->ext_start + 4 * (Py_ssize_t)get16(d + pos + 2);
        if (h->ext_end > n)
            return 0;
        h->one_byte = profile == 0xBEDE;
        h->has_ext = h->one_byte || (profile & 0xFFF0) == 0x1000;
        pos = h->ext_end;
    }
    h->end = n;
    if (d[0] & 0x20) {
        unsigned pad = d[n - 1];
        if (pad == 0 || (Py_ssize_t)pad > n - pos)
            return 0;
        h->end = n - pad;
    }
    h->start = pos;
    h->marker = (d[1] & 0x80) != 0;
    h->pt = d[1] & 0x7F;
    h->seq = get16(d + 2);
    h->ts = get32(d + 4);
    h->ssrc = get32(d + 8);
    return 1;
}

/* The value parse_rtp's extensions dict would hold under ``xid``: 1 and its bounds in d,
 * or 0 (the same walk as parse_extensions; a later element of the id wins, as in the
 * dict). */
static int
head_ext(const unsigned char *d, const Head *h, long xid, Py_ssize_t *vstart, Py_ssize_t *vlen)
{
    int found = 0;
    if (!h->has_ext || xid < 1 || xid > (h->one_byte ? 14 : 255))
        return 0;
    Py_ssize_t pos = h->ext_start, start, end;
    long id;
    while (ext_next(d, &pos, h->ext_end, h->one_byte, &id, &start, &end))
        if (id == xid) {
            *vstart = start;
            *vlen = end - start;
            found = 1;
        }
    return found;
}

static PyObject *
parse_rtp(PyObject *module, PyObject *data)
{
    if (packet_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_packet_class() was not called");
        return NULL;
    }
    if (!PyBytes_CheckExact(data))
        return PyObject_CallOneArg(python_parser, data);
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    Head h;
    if (!parse_head(d, PyBytes_GET_SIZE(data), &h))
        Py_RETURN_NONE;
    PyObject *values[N_SLOTS];
    values[S_EXT] = PyDict_New();
    if (values[S_EXT] == NULL)
        return NULL;
    if (h.has_ext && parse_extensions(values[S_EXT], data, h.ext_start, h.ext_end, h.one_byte) < 0) {
        Py_DECREF(values[S_EXT]);
        return NULL;
    }
    Py_INCREF(data);
    values[S_DATA] = data;
    values[S_MARKER] = PyBool_FromLong(h.marker);
    values[S_PT] = PyLong_FromLong(h.pt);
    values[S_SEQ] = PyLong_FromLong((long)h.seq);
    values[S_TS] = PyLong_FromUnsignedLong(h.ts);
    values[S_SSRC] = PyLong_FromUnsignedLong(h.ssrc);
    values[S_CC] = PyLong_FromLong((long)h.cc);
    values[S_START] = PyLong_FromSsize_t(h.start);
    values[S_END] = PyLong_FromSsize_t(h.end);
    PyObject *packet = NULL;
    int failed = 0;
    for (int i = 0; i < N_SLOTS; i++)
        failed |= values[i] == NULL;
    if (!failed)
        packet = packet_type->tp_alloc(packet_type, 0);
    if (packet == NULL) {
        for (int i = 0; i < N_SLOTS; i++)
            Py_XDECREF(values[i]);
        return NULL;
    }
    for (int i = 0; i < N_SLOTS; i++) /* the new instance's slots are NULL: no old value */
        *(PyObject **)((char *)packet + slot_offset[i]) = values[i];
    return packet;
}


/* -- the Python objects the packet path works on ---------------------------------------
 *
 * The fan-out and the receive path below read and write fields of the server's own Python
 * objects, all __slots__ members, at their offsets (read once from the member descriptors,
 * as for RtpPacket above): Python's own LOAD_ATTR on a slot is an indexed load, and so must
 * this be, or the C costs what the interpreter did (a first version of the fan-out through
 * PyObject_GetAttr did: 12 % of the server's CPU in a group of 7 went to attribute lookups,
 * and nothing was saved). configure() hands over the classes, by name, and the constants
 * of their rules. */

enum {
    K_CONSUMER, K_CONTEXT, K_REWRITER, K_SEND_STATS, K_TALLY, K_STREAM, K_PRODUCER,
    K_UNWRAPPER, K_RECV_STATS, K_NACKS, K_KEYFRAMES, K_BUCKET, K_CODEC, K_SPEAKERS,
    K_SPEAKER, N_CLASSES
};
static const char *const CLASS_NAMES[N_CLASSES] = {
    [K_CONSUMER] = "Consumer", [K_CONTEXT] = "DownstreamContext",
    [K_REWRITER] = "OutputRewriter", [K_SEND_STATS] = "SendStats", [K_TALLY] = "RtpTally",
    [K_STREAM] = "RecvStream", [K_PRODUCER] = "Producer", [K_UNWRAPPER] = "Unwrapper",
    [K_RECV_STATS] = "ReceiveStats", [K_NACKS] = "NackTracker",
    [K_KEYFRAMES] = "KeyframeRequester", [K_BUCKET] = "TokenBucket",
    [K_CODEC] = "CodecInfo", [K_SPEAKERS] = "SpeakerDetector", [K_SPEAKER] = "_Stream",
};

enum {
    A_STREAM, A_PAUSED, A_WAITING, A_TEMPORAL, A_RED, A_CONTEXT, A_C_HEADER, A_LEVEL_ID,
    A_SRC_LEVEL_ID, A_REWRITER, A_HISTORY, A_PT, A_SSRC, A_AST_ID, A_LAST_SENT,
    A_STATS, A_TALLY,
    A_OUTPUT, A_JOINED,
    A_PENDING, A_SKIPPED, A_HIGHEST, A_BASE, A_SEQ_OFFSET, A_TS_OFFSET, A_LAST_SEQ, A_LAST_TS,
    A_PACKETS_SENT, A_OCTETS_SENT, A_FRAMES_SENT,
    T_PACKETS, T_BYTES,
    R_PRODUCER, R_SEQ, R_TS, R_TALLY, R_STATS, R_LAST_PACKET, R_WBYTES, R_WPACKETS,
    R_WSTART, R_WFRAMES, R_CACHE, R_CACHE_SEQ, R_FRAMES, R_NACKS, R_KEYFRAMES, R_SPATIAL,
    R_BUDGET, R_SPEAKERS, R_MUTED, R_LEVEL_ID, R_PARTICIPANT, R_CODEC, R_PARSE_VP8,
    R_IS_VIDEO, R_KEYFRAME_CHECK, R_CONSUMERS, R_TAPS, R_RTT, R_WIDTH, R_HEIGHT,
    R_LAST_SR, R_S_SR_MIDDLE, R_S_SR_ARRIVAL,
    R_U_HALF, R_U_LAST, R_U_MASK, R_U_MOD,
    R_S_BASE, R_S_HIGHEST, R_S_PACKETS, R_S_BYTES, R_S_CLOCK, R_S_TRANSIT, R_S_JITTER,
    R_N_HIGHEST, R_N_MISSING, R_N_KEYFRAME,
    R_K_PENDING,
    R_B_RATE, R_B_BURST, R_B_TOKENS, R_B_UPDATED,
    C_PT, C_RED_PT,
    P_STREAMS, P_COUNT, P_LOUD_SUM,
    N_FIELDS
};
static const struct {
    int cls;
    const char *name;
} FIELDS[N_FIELDS] = {
    [A_STREAM] = {K_CONSUMER, "stream"}, [A_PAUSED] = {K_CONSUMER, "paused"},
    [A_WAITING] = {K_CONSUMER, "waiting_keyframe"}, [A_TEMPORAL] = {K_CONSUMER, "temporal"},
    [A_RED] = {K_CONSUMER, "red"}, [A_CONTEXT] = {K_CONSUMER, "context"},
    [A_C_HEADER] = {K_CONSUMER, "_c_header"}, [A_LEVEL_ID] = {K_CONSUMER, "_level_id"},
    [A_SRC_LEVEL_ID] = {K_CONSUMER, "_src_audio_level_id"},
    [A_REWRITER] = {K_CONSUMER, "rewriter"}, [A_HISTORY] = {K_CONSUMER, "_history"},
    [A_PT] = {K_CONSUMER, "payload_type"},
    [A_SSRC] = {K_CONSUMER, "ssrc"}, [A_AST_ID] = {K_CONSUMER, "_ast_id"},
    [A_LAST_SENT] = {K_CONSUMER, "last_sent_at"}, [A_STATS] = {K_CONSUMER, "stats"},
    [A_TALLY] = {K_CONSUMER, "_tally"},
    [A_OUTPUT] = {K_CONTEXT, "output"}, [A_JOINED] = {K_CONTEXT, "joined_at"},
    [A_PENDING] = {K_REWRITER, "_pending_switch"}, [A_SKIPPED] = {K_REWRITER, "_skipped"},
    [A_HIGHEST] = {K_REWRITER, "_highest_in"}, [A_BASE] = {K_REWRITER, "_base_in"},
    [A_SEQ_OFFSET] = {K_REWRITER, "_seq_offset"}, [A_TS_OFFSET] = {K_REWRITER, "_ts_offset"},
    [A_LAST_SEQ] = {K_REWRITER, "_last_out_seq"}, [A_LAST_TS] = {K_REWRITER, "_last_out_ts"},
    [A_PACKETS_SENT] = {K_SEND_STATS, "packets_sent"},
    [A_OCTETS_SENT] = {K_SEND_STATS, "octets_sent"},
    [A_FRAMES_SENT] = {K_SEND_STATS, "frames_sent"},
    [T_PACKETS] = {K_TALLY, "packets"}, [T_BYTES] = {K_TALLY, "bytes"},
    [R_PRODUCER] = {K_STREAM, "producer"}, [R_SEQ] = {K_STREAM, "_seq"},
    [R_TS] = {K_STREAM, "_ts"}, [R_TALLY] = {K_STREAM, "_tally"},
    [R_STATS] = {K_STREAM, "stats"}, [R_LAST_PACKET] = {K_STREAM, "last_packet_at"},
    [R_WBYTES] = {K_STREAM, "_window_bytes"}, [R_WPACKETS] = {K_STREAM, "_window_packets"},
    [R_WSTART] = {K_STREAM, "_window_start"}, [R_WFRAMES] = {K_STREAM, "_window_frames"},
    [R_CACHE] = {K_STREAM, "_cache"}, [R_CACHE_SEQ] = {K_STREAM, "_cache_seq"},
    [R_FRAMES] = {K_STREAM, "frames"}, [R_NACKS] = {K_STREAM, "nacks"},
    [R_KEYFRAMES] = {K_STREAM, "keyframes"}, [R_SPATIAL] = {K_STREAM, "spatial"},
    [R_BUDGET] = {K_PRODUCER, "budget"}, [R_SPEAKERS] = {K_PRODUCER, "speakers"},
    [R_MUTED] = {K_PRODUCER, "muted"}, [R_LEVEL_ID] = {K_PRODUCER, "audio_level_id"},
    [R_PARTICIPANT] = {K_PRODUCER, "participant_id"}, [R_CODEC] = {K_PRODUCER, "codec"},
    [R_PARSE_VP8] = {K_PRODUCER, "parse_vp8"}, [R_IS_VIDEO] = {K_PRODUCER, "is_video"},
    [R_KEYFRAME_CHECK] = {K_PRODUCER, "keyframe_check"},
    [R_CONSUMERS] = {K_PRODUCER, "consumers"}, [R_TAPS] = {K_PRODUCER, "taps"},
    [R_RTT] = {K_PRODUCER, "rtt"}, [R_WIDTH] = {K_STREAM, "width"},
    [R_HEIGHT] = {K_STREAM, "height"},
    [R_LAST_SR] = {K_STREAM, "last_sr"},
    [R_S_SR_MIDDLE] = {K_RECV_STATS, "last_sr_ntp_middle"},
    [R_S_SR_ARRIVAL] = {K_RECV_STATS, "last_sr_arrival"},
    [R_U_HALF] = {K_UNWRAPPER, "_half"}, [R_U_LAST] = {K_UNWRAPPER, "_last"},
    [R_U_MASK] = {K_UNWRAPPER, "_mask"}, [R_U_MOD] = {K_UNWRAPPER, "_mod"},
    [R_S_BASE] = {K_RECV_STATS, "base_seq"}, [R_S_HIGHEST] = {K_RECV_STATS, "highest_seq"},
    [R_S_PACKETS] = {K_RECV_STATS, "packets_received"},
    [R_S_BYTES] = {K_RECV_STATS, "bytes_received"},
    [R_S_CLOCK] = {K_RECV_STATS, "clock_rate"},
    [R_S_TRANSIT] = {K_RECV_STATS, "_last_transit"}, [R_S_JITTER] = {K_RECV_STATS, "jitter"},
    [R_N_HIGHEST] = {K_NACKS, "_highest"}, [R_N_MISSING] = {K_NACKS, "_missing"},
    [R_N_KEYFRAME] = {K_NACKS, "_keyframe_needed"},
    [R_K_PENDING] = {K_KEYFRAMES, "_pending"},
    [R_B_RATE] = {K_BUCKET, "rate"}, [R_B_BURST] = {K_BUCKET, "burst"},
    [R_B_TOKENS] = {K_BUCKET, "tokens"}, [R_B_UPDATED] = {K_BUCKET, "updated"},
    [C_PT] = {K_CODEC, "payload_type"}, [C_RED_PT] = {K_CODEC, "red_payload_type"},
    [P_STREAMS] = {K_SPEAKERS, "_streams"}, [P_COUNT] = {K_SPEAKER, "count"},
    [P_LOUD_SUM] = {K_SPEAKER, "loud_sum"},
};
static PyTypeObject *klass[N_CLASSES];
static Py_ssize_t field_offset[N_FIELDS];
/* A field held as a C long long in the object (a native_base field), not an object. Only
 * fields the code below reads and writes through field_ll, field_set_ll and field_add may
 * be (NATIVE_OK); configure() refuses any other. */
static char field_native[N_FIELDS];
static const char NATIVE_OK[N_FIELDS] = {
    [A_LEVEL_ID] = 1, [A_PT] = 1, [A_SSRC] = 1, [A_AST_ID] = 1,
    [A_HIGHEST] = 1, [A_BASE] = 1, [A_SEQ_OFFSET] = 1, [A_TS_OFFSET] = 1, [A_LAST_SEQ] = 1,
    [A_LAST_TS] = 1, [A_PACKETS_SENT] = 1, [A_OCTETS_SENT] = 1, [A_FRAMES_SENT] = 1,
    [T_PACKETS] = 1, [T_BYTES] = 1,
    [R_WBYTES] = 1, [R_WPACKETS] = 1, [R_WFRAMES] = 1, [R_FRAMES] = 1, [R_WIDTH] = 1,
    [R_HEIGHT] = 1,
    [R_U_HALF] = 1, [R_U_LAST] = 1, [R_U_MASK] = 1, [R_U_MOD] = 1,
    [R_S_BASE] = 1, [R_S_HIGHEST] = 1, [R_S_PACKETS] = 1, [R_S_BYTES] = 1, [R_S_CLOCK] = 1,
    [R_N_HIGHEST] = 1, [P_COUNT] = 1,
};
static int configured = 0;

#define FIELD(obj, a) (*(PyObject **)((char *)(obj) + field_offset[a]))
#define IS(obj, k) ((obj) != NULL && Py_IS_TYPE((obj), klass[k]))

/* The rules' constants. */
static PyObject *count_failure_fn = NULL; /* fastsend.count_failure */
static long long reorder_window = 3000;   /* OutputRewriter.REORDER_WINDOW */
static Py_ssize_t history_mask = 1023;    /* consumer.HISTORY_MASK */
static Py_ssize_t cache_mask = 1023;      /* producer.CACHE_MASK */
static PyObject *vp8_check = NULL;        /* producer._vp8_keyframe */
static long active_dbov = 50;             /* speakers.ACTIVE_DBOV */

/* Names of what is called or looked up by name (rare branches, foreign objects). */
static PyObject *name_spatial, *name_forward, *name_on_rtp,
    *name_keyframe_arrived, *name_keyframe_due, *name_observe, *name_on_packet,
    *name_nack_upstream, *name_take_keyframe, *name_request_keyframe, *name_red_pt,
    *name_payload_type;

/* configure(classes, never, reorder_window, history_mask, count_failure, cache_mask,
 *           vp8_check, active_dbov): ``classes`` maps each of CLASS_NAMES to
 * its class. */
static PyObject *
configure(PyObject *module, PyObject *args)
{
    PyObject *classes, *never, *count_failure, *check, *cls[N_CLASSES];
    long long window;
    Py_ssize_t hmask, cmask, offsets[N_FIELDS];
    long dbov;
    if (!PyArg_ParseTuple(args, "O!OLnOnOl:configure", &PyDict_Type, &classes, &never,
                          &window, &hmask, &count_failure, &cmask, &check, &dbov))
        return NULL;
    if (hmask < 0 || (hmask & (hmask + 1)) != 0 || cmask < 0 || (cmask & (cmask + 1)) != 0 ||
        window < 0 || dbov < 1 || dbov > 127 || !PyFloat_Check(never) ||
        PyFloat_AS_DOUBLE(never) != -INFINITY) {
        PyErr_SetString(PyExc_ValueError,
                        "masks must be 2**k - 1, the reorder window >= 0, "
                        "the speech level 1..127, never -inf (as History keeps it)");
        return NULL;
    }
    for (int k = 0; k < N_CLASSES; k++) {
        cls[k] = PyDict_GetItemString(classes, CLASS_NAMES[k]); /* borrowed */
        if (cls[k] == NULL || !PyType_Check(cls[k])) {
            PyErr_Format(PyExc_TypeError, "classes lacks the class %s", CLASS_NAMES[k]);
            return NULL;
        }
    }
    char native[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
        if (member_offset(cls[FIELDS[i].cls], FIELDS[i].name, &offsets[i], &native[i]) < 0)
            return NULL;
        if (native[i] && !NATIVE_OK[i]) {
            PyErr_Format(PyExc_TypeError, "%s.%s must be an object slot, not a native field",
                         CLASS_NAMES[FIELDS[i].cls], FIELDS[i].name);
            return NULL;
        }
    }
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&name_spatial, "spatial"}, {&name_forward, "forward"}, {&name_on_rtp, "on_rtp"},
        {&name_keyframe_arrived, "_keyframe_arrived"},
        {&name_keyframe_due, "_keyframe_due"}, {&name_observe, "observe"},
        {&name_on_packet, "on_packet"}, {&name_nack_upstream, "_nack_upstream"},
        {&name_take_keyframe, "take_keyframe_request"},
        {&name_request_keyframe, "request_keyframe"}, {&name_red_pt, "red_payload_type"},
        {&name_payload_type, "payload_type"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (*names[i].slot == NULL &&
            (*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return NULL;
    memcpy(field_offset, offsets, sizeof(offsets));
    memcpy(field_native, native, sizeof(native));
    for (int k = 0; k < N_CLASSES; k++) {
        Py_INCREF(cls[k]);
        Py_XSETREF(klass[k], (PyTypeObject *)cls[k]);
    }
    Py_INCREF(count_failure);
    Py_XSETREF(count_failure_fn, count_failure);
    Py_INCREF(check);
    Py_XSETREF(vp8_check, check);
    reorder_window = window;
    history_mask = hmask;
    cache_mask = cmask;
    active_dbov = dbov;
    configured = 1;
    Py_RETURN_NONE;
}

/* abs-send-time of a moment: seconds in 6.18 fixed point, modulo 64 s, as
 * mediaserver.sfu.rtp.abs_send_time_24 computes it (the same rounding: no FMA). */
static inline unsigned long
ast24_at(double now)
{
    return (unsigned long)((long long)floor(now * 262144.0 + 0.5) & 0xFFFFFF);
}

/* -- native integer fields -------------------------------------------------------------
 *
 * native_base(name, fields): a class to derive from whose instances hold each of
 * ``fields`` as a C long long (a T_LONGLONG member: Python reads and writes it as an int,
 * 0 until set; a value outside 64 bits raises OverflowError, anything but an int
 * TypeError). A counter the packet path moves is then a store into the object, where an
 * int object was made and the old one freed; configure() finds such fields by their
 * descriptors. The definitions live as long as the process (a few classes, made once). */

static PyObject *
native_base(PyObject *module, PyObject *args)
{
    const char *name;
    PyObject *fields;
    if (!PyArg_ParseTuple(args, "sO!:native_base", &name, &PyTuple_Type, &fields))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    if (n < 1 || n > 64) {
        PyErr_SetString(PyExc_ValueError, "1 to 64 fields");
        return NULL;
    }
    size_t name_len = strlen(name);
    PyMemberDef *members = PyMem_Calloc((size_t)n + 1, sizeof(PyMemberDef));
    char *qualname = PyMem_Malloc(name_len + sizeof("mediaserver.sfu._fastpath."));
    if (members == NULL || qualname == NULL)
        goto nomem;
    strcpy(qualname, "mediaserver.sfu._fastpath.");
    strcat(qualname, name);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f = PyTuple_GET_ITEM(fields, i);
        Py_ssize_t len;
        const char *fname = PyUnicode_Check(f) ? PyUnicode_AsUTF8AndSize(f, &len) : NULL;
        if (fname == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "field names must be str");
            goto fail;
        }
        char *copy = PyMem_Malloc((size_t)len + 1);
        if (copy == NULL)
            goto nomem;
        memcpy(copy, fname, (size_t)len + 1);
        members[i].name = copy;
        members[i].type = T_LONGLONG;
        members[i].offset = (Py_ssize_t)(sizeof(PyObject) + (size_t)i * sizeof(long long));
    }
    PyType_Slot slots[] = {
        {Py_tp_members, members},
        {Py_tp_doc, (void *)"Fields held as C long longs (see native_base)."},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = qualname,
        .basicsize = (int)(sizeof(PyObject) + (size_t)n * sizeof(long long)),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
        .slots = slots,
    };
    PyObject *type = PyType_FromSpec(&spec);
    if (type == NULL)
        goto fail;
    return type; /* members and qualname now belong to the type, for good */
nomem:
    PyErr_NoMemory();
fail:
    if (members != NULL)
        for (Py_ssize_t i = 0; i < n; i++)
            PyMem_Free((void *)members[i].name);
    PyMem_Free(members);
    PyMem_Free(qualname);
    return NULL;
}

/* -- History ---------------------------------------------------------------------------
 *
 * History(size): a consumer's sent packets by slot (its output sequence number modulo
 * size): the output sequence number, the extended input one, the output timestamp and
 * the spatial layer of each, and when it was last resent for a NACK (-inf: not asked for
 * since it was sent). The Python path (Consumer.forward, on_nack) goes through its
 * methods; the C fan-out writes an entry in place: one 32-byte record per copy, where a
 * tuple of four and two new ints were made and the ones they replaced freed. consumer.py
 * holds the same thing in Python for a build without the extension. */

typedef struct {
    long long ext_seq;
    double resent;
    unsigned int ts;
    int spatial;
    unsigned short seq;
    unsigned char set;
} HistEntry;

typedef struct {
    PyObject_HEAD
    Py_ssize_t size;
    HistEntry *e;
} History;

static PyTypeObject HistoryType;

static PyObject *
History_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "n:History", &size))
        return NULL;
    if (size < 1 || size > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "size must be 1..2**20");
        return NULL;
    }
    History *self = (History *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->e = PyMem_Calloc((size_t)size, sizeof(HistEntry));
    if (self->e == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->size = size;
    for (Py_ssize_t i = 0; i < size; i++)
        self->e[i].resent = -INFINITY;
    return (PyObject *)self;
}

static void
History_dealloc(History *self)
{
    PyMem_Free(self->e);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The slot an argument names, or -1 with IndexError/TypeError. */
static Py_ssize_t
history_slot(History *self, PyObject *arg)
{
    Py_ssize_t i = PyNumber_AsSsize_t(arg, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred())
        return -1;
    if (i < 0 || i >= self->size) {
        PyErr_SetString(PyExc_IndexError, "history slot out of range");
        return -1;
    }
    return i;
}

static PyObject *
hist_tuple(const HistEntry *h)
{
    if (!h->set)
        Py_RETURN_NONE;
    return Py_BuildValue("(HLIi)", h->seq, h->ext_seq, h->ts, h->spatial);
}

static PyObject *
hist_resent(const HistEntry *h)
{
    return PyFloat_FromDouble(h->resent);
}

/* A packet sent: its record in the slot, not resent since. */
static inline void
hist_put(HistEntry *h, unsigned seq, long long ext_seq, unsigned long ts, int spatial)
{
    h->seq = (unsigned short)seq;
    h->ext_seq = ext_seq;
    h->ts = (unsigned int)ts;
    h->spatial = spatial;
    h->set = 1;
    h->resent = -INFINITY;
}

static PyObject *
History_get(History *self, PyObject *arg)
{
    Py_ssize_t i = history_slot(self, arg);
    return i < 0 ? NULL : hist_tuple(&self->e[i]);
}

static PyObject *
History_put(History *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "put takes 5 arguments");
        return NULL;
    }
    Py_ssize_t i = history_slot(self, args[0]);
    if (i < 0)
        return NULL;
    long seq = PyLong_AsLong(args[1]);
    long long ext_seq = PyLong_AsLongLong(args[2]);
    long long ts = PyLong_AsLongLong(args[3]);
    long spatial = PyLong_AsLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (seq < 0 || seq > 0xFFFF || ts < 0 || ts > 0xFFFFFFFFLL || spatial < INT_MIN ||
        spatial > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "seq, timestamp or layer out of range");
        return NULL;
    }
    hist_put(&self->e[i], (unsigned)seq, ext_seq, (unsigned long)ts, (int)spatial);
    Py_RETURN_NONE;
}

static PyObject *
History_resent_at(History *self, PyObject *arg)
{
    Py_ssize_t i = history_slot(self, arg);
    return i < 0 ? NULL : hist_resent(&self->e[i]);
}

static PyObject *
History_set_resent(History *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_resent takes 2 arguments");
        return NULL;
    }
    Py_ssize_t i = history_slot(self, args[0]);
    if (i < 0)
        return NULL;
    double t = PyFloat_AsDouble(args[1]);
    if (t == -1.0 && PyErr_Occurred())
        return NULL;
    self->e[i].resent = t;
    Py_RETURN_NONE;
}

static PyObject *
History_clear(History *self, PyObject *Py_UNUSED(ignored))
{
    for (Py_ssize_t i = 0; i < self->size; i++)
        self->e[i].set = 0;
    Py_RETURN_NONE;
}

/* [item(record) for every slot] */
static PyObject *
history_list(History *self, PyObject *(*item)(const HistEntry *))
{
    PyObject *out = PyList_New(self->size);
    for (Py_ssize_t i = 0; out != NULL && i < self->size; i++) {
        PyObject *t = item(&self->e[i]);
        if (t == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static PyObject *
History_entries(History *self, PyObject *Py_UNUSED(ignored))
{
    return history_list(self, hist_tuple);
}

static PyObject *
History_resents(History *self, PyObject *Py_UNUSED(ignored))
{
    return history_list(self, hist_resent);
}

static Py_ssize_t
History_len(History *self)
{
    return self->size;
}

static PyMethodDef History_methods[] = {
    {"get", (PyCFunction)History_get, METH_O,
     "get(slot) -> (out_seq, ext_seq, out_ts, spatial) | None"},
    {"put", (PyCFunction)(void (*)(void))History_put, METH_FASTCALL,
     "put(slot, out_seq, ext_seq, out_ts, spatial): a packet sent; not resent since"},
    {"resent_at", (PyCFunction)History_resent_at, METH_O,
     "resent_at(slot) -> when the slot's packet was last resent (-inf: never)"},
    {"set_resent", (PyCFunction)(void (*)(void))History_set_resent, METH_FASTCALL,
     "set_resent(slot, when)"},
    {"clear", (PyCFunction)History_clear, METH_NOARGS, "clear(): every entry forgotten"},
    {"entries", (PyCFunction)History_entries, METH_NOARGS, "entries() -> list of get()"},
    {"resents", (PyCFunction)History_resents, METH_NOARGS, "resents() -> list of resent_at()"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods History_as_sequence = {
    .sq_length = (lenfunc)History_len,
};

static PyTypeObject HistoryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mediaserver.sfu._fastpath.History",
    .tp_basicsize = sizeof(History),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A consumer's sent packets by slot (see the module's comment).",
    .tp_new = History_new,
    .tp_dealloc = (destructor)History_dealloc,
    .tp_methods = History_methods,
    .tp_as_sequence = &History_as_sequence,
};

/* -- fan-out ---------------------------------------------------------------------------
 *
 * fanout(consumers, stream, pkt, ext_seq, ext_ts, keyframe, now): one incoming packet to
 * every consumer of its stream, as
 *
 *     for consumer in consumers:
 *         consumer.forward(stream, pkt, ext_seq, ext_ts, keyframe, now)
 *
 * would, with mediaserver.sfu.consumer.Consumer.forward as the reference. A consumer in
 * the plain state (forwarding this stream, not paused, not waiting for a keyframe, no
 * temporal filter, no RED conversion, its output ready, its rewriter with no pending
 * switch nor skipped packets, the packet not too old) is done here on the very same
 * Python objects: the rewriter's fields, the history slot, the header, protect and send,
 * the counters. Anything else, decided before anything is changed, is the Python
 * method's: one code path owns each rule, and a consumer's state never lives in two
 * places. */

/* Helpers on a slot at a byte offset of an object. */
#define SLOT_AT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* A slot holding an int that fits 64 bits: 1 and the value; 0 when it does not (unset, not
 * an int, too large: the Python path's, which handles any int). */
static inline int
slot_ll(PyObject *obj, Py_ssize_t off, long long *out)
{
    PyObject *v = SLOT_AT(obj, off);
    if (v == NULL || !PyLong_CheckExact(v))
        return 0;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *out = x;
    return 1;
}

/* Store a new reference in a slot (the old value released after). */
static inline void
slot_put(PyObject *obj, Py_ssize_t off, PyObject *value)
{
    PyObject *old = SLOT_AT(obj, off);
    SLOT_AT(obj, off) = value;
    Py_XDECREF(old);
}

static inline int
slot_set_ll(PyObject *obj, Py_ssize_t off, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    slot_put(obj, off, v);
    return 0;
}

#define NATIVE_AT(obj, a) (*(long long *)((char *)(obj) + field_offset[a]))
#define field_put(obj, a, value) slot_put((obj), field_offset[a], (value))

/* A field that holds an int fitting 64 bits, native or an int object: 1 and its value, or
 * 0 (the Python path's). */
static inline int
field_ll(PyObject *obj, int a, long long *out)
{
    if (field_native[a]) {
        *out = NATIVE_AT(obj, a);
        return 1;
    }
    return slot_ll(obj, field_offset[a], out);
}

static inline int
field_set_ll(PyObject *obj, int a, long long value)
{
    if (field_native[a]) {
        NATIVE_AT(obj, a) = value;
        return 0;
    }
    return slot_set_ll(obj, field_offset[a], value);
}

/* What the receive path and the fan-out read of the packet once: from a packet object
 * (fan_packet), or from a header parsed in C (fan_head: ``pkt`` NULL until a Python path
 * needs the object, which fan_pkt then makes from ``data``, owned here). */
typedef struct {
    PyObject *pkt, *stream, *data, *extensions, *now;
    int marker, own_pkt, has_head;
    int spatial, spatial_ok; /* the stream's layer, read once by fan_out */
    long pt;
    Py_ssize_t start, end;
    long long seq, ts, ext_seq, ext_ts;
    unsigned long ast24;
    Head head;
} Fan;

/* The packet object, made from the data if the Fan has none yet: borrowed, or NULL with
 * an exception. */
static PyObject *
fan_pkt(Fan *f)
{
    if (f->pkt == NULL) {
        PyObject *pkt = parse_rtp(NULL, f->data);
        if (pkt == NULL)
            return NULL;
        if (pkt == Py_None) { /* cannot be: parse_head accepted the same bytes */
            Py_DECREF(pkt);
            PyErr_SetString(PyExc_RuntimeError, "a packet parse_rtp refuses");
            return NULL;
        }
        f->pkt = pkt;
        f->own_pkt = 1;
    }
    return f->pkt;
}

static void
fan_release(Fan *f)
{
    if (f->own_pkt)
        Py_CLEAR(f->pkt);
    f->own_pkt = 0;
}

/* The packet's header extension ``xid`` (an int object, as the extensions dict is keyed):
 * 1 and its value's bytes, 0 absent, 2 present but not bytes (the Python path's), -1
 * error. */
static int
fan_ext(Fan *f, PyObject *xid, const unsigned char **value, Py_ssize_t *len)
{
    if (f->has_head) {
        if (!PyLong_CheckExact(xid))
            return 2;
        int overflow;
        long id = PyLong_AsLongAndOverflow(xid, &overflow);
        Py_ssize_t vstart;
        if (overflow || !head_ext((const unsigned char *)PyBytes_AS_STRING(f->data), &f->head,
                                  id, &vstart, len))
            return 0;
        *value = (const unsigned char *)PyBytes_AS_STRING(f->data) + vstart;
        return 1;
    }
    if (!PyDict_CheckExact(f->extensions))
        return 2;
    PyObject *raw = PyDict_GetItemWithError(f->extensions, xid); /* borrowed */
    if (raw == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyBytes_CheckExact(raw))
        return 2;
    *value = (const unsigned char *)PyBytes_AS_STRING(raw);
    *len = PyBytes_GET_SIZE(raw);
    return 1;
}

/* The plain consumer's copy: 1 done, 0 not plain (nothing changed: the Python method's),
 * -1 error. The order of the checks and of the changes is Consumer.forward's. */
static int
forward_plain(PyObject *c, Fan *f)
{
    if (!IS(c, K_CONSUMER) || FIELD(c, A_STREAM) != f->stream ||
        FIELD(c, A_PAUSED) != Py_False || FIELD(c, A_WAITING) != Py_False ||
        FIELD(c, A_TEMPORAL) != Py_None || FIELD(c, A_RED) != Py_None ||
        FIELD(c, A_C_HEADER) != Py_True)
        return 0;
    PyObject *ctx = FIELD(c, A_CONTEXT);
    if (!IS(ctx, K_CONTEXT) || FIELD(ctx, A_JOINED) != Py_None)
        return 0; /* the first copy to a subscriber is timed by the Python path */
    Output *out = (Output *)FIELD(ctx, A_OUTPUT);
    if (out == NULL || !PyObject_TypeCheck((PyObject *)out, &OutputType) || out->fd < 0 ||
        out->ctx == NULL)
        return 0;

    long long level_id, level = 0, pt, ssrc, ast_id;
    if (!field_ll(c, A_LEVEL_ID, &level_id) || !field_ll(c, A_PT, &pt) ||
        !field_ll(c, A_SSRC, &ssrc) || !field_ll(c, A_AST_ID, &ast_id) || ast_id < 0 ||
        ast_id > 14)
        return 0;
    if (level_id) {
        /* Python: the level is copied when both sides negotiated it and the packet has
         * one; a value of another length than one byte is Python's to copy. */
        PyObject *src = FIELD(c, A_SRC_LEVEL_ID);
        if (src == NULL)
            return 0;
        int found = 0;
        const unsigned char *raw = NULL;
        Py_ssize_t raw_len = 0;
        if (src != Py_None) {
            if (!PyLong_CheckExact(src))
                return 0;
            if (PyLong_AsLong(src) != 0) { /* a src id of 0 counts as not negotiated */
                found = fan_ext(f, src, &raw, &raw_len);
                if (found < 0)
                    return -1;
                if (found == 2)
                    return 0;
            }
        }
        if (!found)
            level_id = 0; /* not negotiated upstream, or no level in this packet */
        else if (raw_len == 1)
            level = raw[0];
        else
            return 0;
    }
    if (level_id < 0 || level_id > 14)
        return 0;

    PyObject *rw = FIELD(c, A_REWRITER);
    if (!IS(rw, K_REWRITER) || FIELD(rw, A_PENDING) != Py_False)
        return 0; /* the first packet after a source change: Python's */
    PyObject *skipped = FIELD(rw, A_SKIPPED);
    if (skipped == NULL || !PyList_CheckExact(skipped) || PyList_GET_SIZE(skipped) != 0)
        return 0;
    long long highest, base, seq_offset, ts_offset, last_seq;
    if (!field_ll(rw, A_HIGHEST, &highest) || !field_ll(rw, A_BASE, &base) ||
        !field_ll(rw, A_SEQ_OFFSET, &seq_offset) || !field_ll(rw, A_TS_OFFSET, &ts_offset) ||
        !field_ll(rw, A_LAST_SEQ, &last_seq))
        return 0;
    int newer = f->ext_seq > highest;
    if (!newer && (f->ext_seq < base || f->ext_seq < highest - reorder_window))
        return 0; /* too old: Python's drop, counted there */
    PyObject *history = FIELD(c, A_HISTORY);
    PyObject *stats = FIELD(c, A_STATS), *tally = FIELD(c, A_TALLY);
    long long packets_sent, octets_sent, frames_sent, packets, bytes;
    if (history == NULL || !Py_IS_TYPE(history, &HistoryType) ||
        ((History *)history)->size <= history_mask || !f->spatial_ok ||
        !IS(stats, K_SEND_STATS) ||
        !IS(tally, K_TALLY) || !field_ll(stats, A_PACKETS_SENT, &packets_sent) ||
        !field_ll(stats, A_OCTETS_SENT, &octets_sent) ||
        !field_ll(stats, A_FRAMES_SENT, &frames_sent) || !field_ll(tally, T_PACKETS, &packets) ||
        !field_ll(tally, T_BYTES, &bytes))
        return 0;

    /* From here on the consumer changes, as Consumer.forward changes it. */
    long long out_seq = f->ext_seq + seq_offset, out_ts = f->ext_ts + ts_offset;
    unsigned long seq16 = (unsigned long)(out_seq & 0xFFFF);
    unsigned long ts32 = (unsigned long)(out_ts & 0xFFFFFFFFLL);
    if ((newer && field_set_ll(rw, A_HIGHEST, f->ext_seq) < 0) ||
        (out_seq > last_seq &&
         (field_set_ll(rw, A_LAST_SEQ, out_seq) < 0 || field_set_ll(rw, A_LAST_TS, out_ts) < 0)))
        return -1;
    hist_put(&((History *)history)->e[seq16 & (unsigned long)history_mask], (unsigned)seq16,
             f->ext_seq, ts32, f->spatial);

    long sent = output_rtp(out, f->marker, (unsigned long)pt, seq16, ts32,
                           (unsigned long)ssrc, (unsigned long)level_id,
                           (unsigned long)level, (unsigned long)ast_id, f->ast24,
                           (const unsigned char *)PyBytes_AS_STRING(f->data) + f->start,
                           f->end - f->start);
    if (sent <= 0) {
        /* Lost at the socket (or SRTP refused): counted; the subscriber asks again. */
        PyObject *res = PyObject_CallFunction(count_failure_fn, "l", sent);
        if (res == NULL)
            return -1;
        Py_DECREF(res);
        return 1;
    }
    Py_INCREF(f->now);
    field_put(c, A_LAST_SENT, f->now);
    if (field_set_ll(stats, A_PACKETS_SENT, packets_sent + 1) < 0 ||
        field_set_ll(stats, A_OCTETS_SENT, octets_sent + (f->end - f->start)) < 0 ||
        (f->marker && field_set_ll(stats, A_FRAMES_SENT, frames_sent + 1) < 0) ||
        field_set_ll(tally, T_PACKETS, packets + 1) < 0 ||
        field_set_ll(tally, T_BYTES, bytes + sent) < 0)
        return -1;
    return 1;
}

/* A packet's fields as fan_out needs them, or 0 when the packet is not plain (not made by
 * parse_rtp, or padding only: Python's). */
static int
fan_packet(Fan *f, PyObject *pkt)
{
    f->pkt = pkt;
    if (!Py_IS_TYPE(pkt, packet_type))
        return 0;
    f->data = *(PyObject **)((char *)pkt + slot_offset[S_DATA]);
    f->extensions = *(PyObject **)((char *)pkt + slot_offset[S_EXT]);
    PyObject *m = *(PyObject **)((char *)pkt + slot_offset[S_MARKER]);
    PyObject *st = *(PyObject **)((char *)pkt + slot_offset[S_START]);
    PyObject *en = *(PyObject **)((char *)pkt + slot_offset[S_END]);
    if (f->data == NULL || f->extensions == NULL || st == NULL || en == NULL ||
        !PyBytes_CheckExact(f->data) || !PyLong_CheckExact(st) || !PyLong_CheckExact(en) ||
        (m != Py_True && m != Py_False))
        return 0;
    f->marker = m == Py_True;
    f->start = PyLong_AsSsize_t(st);
    f->end = PyLong_AsSsize_t(en);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 0 <= f->start && f->start < f->end && f->end <= PyBytes_GET_SIZE(f->data);
}

/* A packet object's payload type, sequence number and timestamp into f (fan_head reads
 * them from the header): 0 when they are not plain ints (the Python path's). */
static int
fan_numbers(Fan *f)
{
    PyObject *pt = *(PyObject **)((char *)f->pkt + slot_offset[S_PT]);
    PyObject *seq = *(PyObject **)((char *)f->pkt + slot_offset[S_SEQ]);
    PyObject *ts = *(PyObject **)((char *)f->pkt + slot_offset[S_TS]);
    if (pt == NULL || seq == NULL || ts == NULL || !PyLong_CheckExact(pt) ||
        !PyLong_CheckExact(seq) || !PyLong_CheckExact(ts))
        return 0;
    f->pt = PyLong_AsLong(pt);
    f->seq = PyLong_AsLongLong(seq);
    f->ts = PyLong_AsLongLong(ts);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* The same from a header parse_head read of ``data`` (bytes): 0 when the packet is not
 * plain (padding only: Python's). */
static int
fan_head(Fan *f, PyObject *data, const Head *h)
{
    f->pkt = NULL;
    f->own_pkt = 0;
    f->data = data;
    f->extensions = NULL;
    f->has_head = 1;
    f->head = *h;
    f->marker = h->marker;
    f->start = h->start;
    f->end = h->end;
    f->pt = h->pt;
    f->seq = h->seq;
    f->ts = (long long)h->ts;
    return f->start < f->end;
}

/* Every consumer: the plain ones here, the rest by Consumer.forward(*pyargs), pyargs being
 * (stream, pkt, ext_seq, ext_ts, keyframe, now); an ext_ts of NULL is made from f->ext_ts
 * when a consumer needs it (most packets meet none: no int to allocate). f->stream,
 * ext_seq, ext_ts, now and ast24 are set; plain says whether fan_packet accepted the
 * packet. 0, or -1 on error. */
static int
fan_out(PyObject *consumers, Fan *f, int plain, PyObject *const *pyargs)
{
    PyObject *ext_ts = pyargs[3];
    int own_ts = 0, rc = 0;
    f->spatial_ok = 0; /* a layer that is not a C int: every copy Python's */
    if (plain) {
        PyObject *spatial = IS(f->stream, K_STREAM) ? FIELD(f->stream, R_SPATIAL) : NULL;
        if (spatial != NULL)
            Py_INCREF(spatial);
        else if ((spatial = PyObject_GetAttr(f->stream, name_spatial)) == NULL)
            return -1;
        int overflow = 1;
        long value = PyLong_CheckExact(spatial) ? PyLong_AsLongAndOverflow(spatial, &overflow) : 0;
        Py_DECREF(spatial);
        f->spatial_ok = !overflow && value >= INT_MIN && value <= INT_MAX;
        f->spatial = (int)value;
    }
    /* Index by index, as Python's for loop over a list that a consumer may change. */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(consumers) && rc == 0; i++) {
        PyObject *c = PyList_GET_ITEM(consumers, i);
        Py_INCREF(c);
        int r = plain ? forward_plain(c, f) : 0;
        if (r == 0 && ext_ts == NULL && (ext_ts = PyLong_FromLongLong(f->ext_ts)) != NULL)
            own_ts = 1;
        if (r == 0 && ext_ts != NULL) {
            PyObject *pkt = pyargs[1] ? pyargs[1] : fan_pkt(f); /* made once, if needed */
            PyObject *res = pkt == NULL ? NULL
                                        : PyObject_VectorcallMethod(
                                              name_forward,
                                              (PyObject *[]){c, pyargs[0], pkt, pyargs[2],
                                                             ext_ts, pyargs[4], pyargs[5]},
                                              7, NULL);
            r = res == NULL ? -1 : 1;
            Py_XDECREF(res);
        }
        Py_DECREF(c);
        if (r <= 0)
            rc = -1; /* an error (r == 0 here: the int could not be made) */
    }
    if (own_ts)
        Py_DECREF(ext_ts);
    return rc;
}

static PyObject *
fanout(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "fanout takes 7 arguments");
        return NULL;
    }
    if (!configured || packet_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() was not called");
        return NULL;
    }
    PyObject *consumers = args[0];
    if (!PyList_CheckExact(consumers)) {
        PyErr_SetString(PyExc_TypeError, "consumers must be a list");
        return NULL;
    }
    Fan f = {0};
    f.stream = args[1];
    f.now = args[6];
    f.ext_seq = PyLong_AsLongLong(args[3]);
    if (f.ext_seq == -1 && PyErr_Occurred())
        return NULL;
    f.ext_ts = PyLong_AsLongLong(args[4]);
    if (f.ext_ts == -1 && PyErr_Occurred())
        return NULL;
    double now = PyFloat_AsDouble(args[6]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    f.ast24 = ast24_at(now);
    int plain = fan_packet(&f, args[2]);
    if (fan_out(consumers, &f, plain, args + 1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* -- receive ---------------------------------------------------------------------------
 *
 * receive(stream, pkt, now): a media packet of a publisher's stream, as
 * mediaserver.sfu.producer.RecvStream.on_rtp(pkt, now) takes it (the reference), then the
 * fan-out above. The stream's bookkeeping (byte budget, sequence and timestamp unwrapping,
 * counters, RFC 3550 jitter, rate window, packet cache, frame count, NACK tracking in the
 * common case) is done here on the Python objects' slots; what is rare or is a decision
 * (closing a rate window, a keyframe candidate, a due keyframe request, a sequence gap or
 * missing packets to NACK, an audio level for the speaker detector) is the Python
 * methods' still, called in on_rtp's order. A packet this cannot take whole (a simulcast
 * or RED stream, a recording tap, over the byte budget, a padding-only packet, fields not
 * of the expected types) goes to RecvStream.on_rtp before anything changes. */

static inline int
field_set_double(PyObject *obj, int a, double value)
{
    PyObject *v = PyFloat_FromDouble(value);
    if (v == NULL)
        return -1;
    field_put(obj, a, v);
    return 0;
}

/* field += delta: in C while the field holds an int that fits 64 bits (the common case),
 * else with Python's own addition, whatever the field holds by then (a Python call earlier
 * in the packet may have reset it). */
static int
field_add(PyObject *obj, int a, long long delta)
{
    long long x;
    if (field_ll(obj, a, &x) && !((delta > 0 && x > LLONG_MAX - delta) ||
                                  (delta < 0 && x < LLONG_MIN - delta)))
        return field_set_ll(obj, a, x + delta);
    if (field_native[a]) {
        PyErr_Format(PyExc_OverflowError, "%s overflows 64 bits", FIELDS[a].name);
        return -1;
    }
    PyObject *old = FIELD(obj, a);
    if (old == NULL) {
        PyErr_Format(PyExc_AttributeError, "%s", FIELDS[a].name);
        return -1;
    }
    PyObject *d = PyLong_FromLongLong(delta);
    if (d == NULL)
        return -1;
    PyObject *sum = PyNumber_Add(old, d);
    Py_DECREF(d);
    if (sum == NULL)
        return -1;
    field_put(obj, a, sum);
    return 0;
}

static inline int
is_float(PyObject *v)
{
    return v != NULL && PyFloat_CheckExact(v);
}

/* Unwrapper.unwrap without changing it: the extended value, or 0 if its fields are not
 * plain ints. */
static int
unwrap_peek(PyObject *u, long long value, long long *ext)
{
    long long last, mask, half, mod;
    if (!IS(u, K_UNWRAPPER) || !field_ll(u, R_U_LAST, &last) ||
        !field_ll(u, R_U_MASK, &mask) || !field_ll(u, R_U_HALF, &half) ||
        !field_ll(u, R_U_MOD, &mod))
        return 0;
    if (last < 0) {
        *ext = mod + value;
        return 1;
    }
    long long d = (value - last) & mask;
    if (d >= half)
        d -= mod;
    *ext = last + d;
    return 1;
}

/* Call obj.name(*args); its result or NULL. */
static PyObject *
call_method(PyObject *obj, PyObject *name, PyObject *a1, PyObject *a2, PyObject *a3)
{
    PyObject *argv[4] = {obj, a1, a2, a3};
    size_t n = 1 + (a1 != NULL) + (a2 != NULL) + (a3 != NULL);
    return PyObject_VectorcallMethod(name, argv, n, NULL);
}

static int
call_void(PyObject *obj, PyObject *name, PyObject *a1, PyObject *a2, PyObject *a3)
{
    PyObject *r = call_method(obj, name, a1, a2, a3);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The codec's attribute ``a`` (a CodecInfo's slot, read at its offset; any other object's
 * by name): a new reference, or NULL with an exception. */
static PyObject *
codec_attr(PyObject *codec, int a, PyObject *name)
{
    PyObject *v = IS(codec, K_CODEC) ? FIELD(codec, a) : NULL;
    if (v != NULL) {
        Py_INCREF(v);
        return v;
    }
    return PyObject_GetAttr(codec, name);
}

/* v == pt, as Python compares them, for a packet's payload type pt (0..127: a small int
 * CPython shares, so nothing is made): 1, 0, or -1 with an exception. */
static int
pt_is(PyObject *v, long pt)
{
    PyObject *p = PyLong_FromLong(pt);
    if (p == NULL)
        return -1;
    int same = v == p ? 1 : PyObject_RichCompareBool(v, p, Py_EQ);
    Py_DECREF(p);
    return same;
}

/* producer._vp8_keyframe on a VP8 payload (descriptor first, RFC 7741) of n > 0 bytes
 * whose first byte starts partition 0: 1 if it starts a keyframe, with the frame's size
 * in *width and *height when its header is whole (else left 0); 0 if not. */
static int
vp8_keyframe(const unsigned char *p, Py_ssize_t n, long *width, long *height)
{
    Py_ssize_t pos = 1;
    if (n < 2)
        return 0;
    if (p[0] & 0x80) {
        unsigned char x = p[1];
        pos = 2;
        if (x & 0x80) {
            if (pos >= n)
                return 0;
            pos += (p[pos] & 0x80) ? 2 : 1;
        }
        if (x & 0x40)
            pos++;
        if (x & 0x30)
            pos++;
    }
    if (pos >= n || (p[pos] & 0x01))
        return 0;
    if (pos + 10 <= n && p[pos + 3] == 0x9d && p[pos + 4] == 0x01 && p[pos + 5] == 0x2a) {
        *width = (p[pos + 6] | (p[pos + 7] << 8)) & 0x3FFF;
        *height = (p[pos + 8] | (p[pos + 9] << 8)) & 0x3FFF;
    }
    return 1;
}

/* SpeakerDetector.observe(who, level) on the detector's own objects: 1 done, 0 not plain
 * (nothing changed: the method's; a stream heard for the first time is), -1 error. */
static int
observe_level(PyObject *speakers, PyObject *who, long level)
{
    if (!IS(speakers, K_SPEAKERS) || who == NULL || !PyUnicode_CheckExact(who))
        return 0;
    PyObject *streams = FIELD(speakers, P_STREAMS);
    if (streams == NULL || !PyDict_CheckExact(streams))
        return 0;
    PyObject *st = PyDict_GetItemWithError(streams, who); /* borrowed */
    if (st == NULL)
        return PyErr_Occurred() ? -1 : 0;
    long long count;
    PyObject *loud = IS(st, K_SPEAKER) ? FIELD(st, P_LOUD_SUM) : NULL;
    if (!is_float(loud) || !field_ll(st, P_COUNT, &count) || count == LLONG_MAX)
        return 0;
    double sum = PyFloat_AS_DOUBLE(loud);
    if (field_set_ll(st, P_COUNT, count + 1) < 0)
        return -1;
    if (level < active_dbov &&
        field_set_double(st, P_LOUD_SUM, sum + (double)(active_dbov - level) / (double)active_dbov) < 0)
        return -1;
    return 1;
}

/* The packet ``f`` holds (fan_packet's with fan_numbers, or fan_head's; plain), of
 * ``stream``: 1 taken whole; 0 not plain, nothing changed (RecvStream.on_rtp's); -1 error.
 * A packet object made on the way is left in f (fan_release). */
static int
receive_plain(PyObject *stream, Fan *f, PyObject *nowobj)
{
    if (!configured || packet_type == NULL || !IS(stream, K_STREAM) || !is_float(nowobj))
        return 0;
    double now = PyFloat_AS_DOUBLE(nowobj);
    PyObject *producer = FIELD(stream, R_PRODUCER);
    if (!IS(producer, K_PRODUCER))
        return 0;
    PyObject *consumers = FIELD(producer, R_CONSUMERS), *taps = FIELD(producer, R_TAPS);
    PyObject *is_video = FIELD(producer, R_IS_VIDEO), *muted = FIELD(producer, R_MUTED);
    PyObject *check = FIELD(producer, R_KEYFRAME_CHECK);
    if (consumers == NULL || !PyList_CheckExact(consumers) || taps == NULL ||
        !PyList_CheckExact(taps) || PyList_GET_SIZE(taps) != 0 ||
        FIELD(producer, R_PARSE_VP8) != Py_False || (is_video != Py_True && is_video != Py_False) ||
        (muted != Py_True && muted != Py_False) || check == NULL)
        return 0;
    /* RED from the publisher: its primary block is Python's to find. */
    PyObject *codec = FIELD(producer, R_CODEC);
    if (codec == NULL)
        return 0;
    PyObject *red = codec_attr(codec, C_RED_PT, name_red_pt);
    if (red == NULL)
        return -1;
    int is_red = red != Py_None && pt_is(red, f->pt) != 0;
    Py_DECREF(red);
    if (is_red)
        return PyErr_Occurred() ? -1 : 0;

    /* The byte budget (TokenBucket.take): worked out first, applied below. */
    Py_ssize_t size = PyBytes_GET_SIZE(f->data);
    PyObject *budget = FIELD(producer, R_BUDGET);
    double tokens = 0, updated = 0;
    int has_updated = 0, refill = 0;
    if (budget != Py_None) {
        PyObject *rate = IS(budget, K_BUCKET) ? FIELD(budget, R_B_RATE) : NULL;
        PyObject *burst = rate ? FIELD(budget, R_B_BURST) : NULL;
        PyObject *tok = rate ? FIELD(budget, R_B_TOKENS) : NULL;
        PyObject *upd = rate ? FIELD(budget, R_B_UPDATED) : NULL;
        if (!is_float(rate) || !is_float(burst) || !is_float(tok) ||
            (upd != Py_None && !is_float(upd)))
            return 0;
        tokens = PyFloat_AS_DOUBLE(tok);
        has_updated = upd != Py_None;
        if (has_updated) {
            updated = PyFloat_AS_DOUBLE(upd);
            if (now > updated) {
                double filled = tokens + (now - updated) * PyFloat_AS_DOUBLE(rate);
                double b = PyFloat_AS_DOUBLE(burst);
                tokens = b <= filled ? b : filled; /* min(burst, filled) */
            }
        }
        refill = !has_updated || now > updated;
        if (!(tokens >= (double)size))
            return 0; /* over the budget: Python drops it and hides the hole */
    }

    long long seq = f->seq, ts = f->ts, ext_seq, ext_ts;
    PyObject *seq_u = FIELD(stream, R_SEQ), *ts_u = FIELD(stream, R_TS);
    if (!unwrap_peek(seq_u, seq, &ext_seq) || !unwrap_peek(ts_u, ts, &ext_ts))
        return 0;
    PyObject *tally = FIELD(stream, R_TALLY), *stats = FIELD(stream, R_STATS);
    long long base_seq, highest_seq, clock_rate;
    PyObject *jitter = NULL, *transit_last = NULL;
    if (!IS(tally, K_TALLY) || !IS(stats, K_RECV_STATS) ||
        !field_ll(stats, R_S_BASE, &base_seq) || !field_ll(stats, R_S_HIGHEST, &highest_seq) ||
        !field_ll(stats, R_S_CLOCK, &clock_rate) ||
        !is_float(jitter = FIELD(stats, R_S_JITTER)) ||
        ((transit_last = FIELD(stats, R_S_TRANSIT)) != Py_None && !is_float(transit_last)))
        return 0;
    PyObject *wstart = FIELD(stream, R_WSTART);
    if (wstart == NULL || (wstart != Py_None && !is_float(wstart)))
        return 0;
    /* The audio level the speaker detector is told of, if it is. */
    PyObject *speakers = FIELD(producer, R_SPEAKERS);
    PyObject *level_id = FIELD(producer, R_LEVEL_ID);
    long level = -1; /* none to tell */
    if (speakers == NULL || level_id == NULL)
        return 0;
    if (speakers != Py_None && muted == Py_False) {
        int truth = PyObject_IsTrue(level_id);
        if (truth < 0)
            return -1;
        if (truth) {
            const unsigned char *raw;
            Py_ssize_t raw_len;
            int found = fan_ext(f, level_id, &raw, &raw_len);
            if (found < 0)
                return -1;
            if (found == 2)
                return 0;
            if (found && raw_len > 0)
                level = raw[0] & 0x7F;
        }
    }
    PyObject *cache = FIELD(stream, R_CACHE), *cache_seq = FIELD(stream, R_CACHE_SEQ);
    PyObject *keyframes = FIELD(stream, R_KEYFRAMES), *nacks = FIELD(stream, R_NACKS);
    if (cache == NULL || cache_seq == NULL || !PyList_CheckExact(cache) ||
        !PyList_CheckExact(cache_seq) || PyList_GET_SIZE(cache) <= cache_mask ||
        PyList_GET_SIZE(cache_seq) <= cache_mask || !IS(keyframes, K_KEYFRAMES) ||
        nacks == NULL || (nacks != Py_None && !IS(nacks, K_NACKS)))
        return 0;

    /* -- From here on, on_rtp's changes in on_rtp's order. -- The objects used after a
     * Python call are held: a callback could rebind a field (RecvStream.restart does). */
    PyObject *held[] = {producer, consumers, cache, cache_seq, keyframes, nacks};
    for (size_t h = 0; h < sizeof(held) / sizeof(held[0]); h++)
        Py_XINCREF(held[h]);
    PyObject *ext_seq_obj = NULL;
    int rc = -1;
    if (budget != Py_None) {
        if (refill && field_set_double(budget, R_B_UPDATED, now) < 0)
            goto release;
        if (field_set_double(budget, R_B_TOKENS, tokens - (double)size) < 0)
            goto release;
    }
    if (field_set_ll(seq_u, R_U_LAST, ext_seq) < 0 || field_set_ll(ts_u, R_U_LAST, ext_ts) < 0)
        goto release;
    if (field_add(tally, T_PACKETS, 1) < 0 || field_add(tally, T_BYTES, size) < 0)
        goto release;
    /* ReceiveStats.on_packet(ext_seq, pkt.timestamp, size, now) */
    if (base_seq < 0) {
        if (field_set_ll(stats, R_S_BASE, ext_seq) < 0 ||
            field_set_ll(stats, R_S_HIGHEST, ext_seq) < 0)
            goto release;
    }
    else if (ext_seq > highest_seq && field_set_ll(stats, R_S_HIGHEST, ext_seq) < 0)
        goto release;
    if (field_add(stats, R_S_PACKETS, 1) < 0 || field_add(stats, R_S_BYTES, size) < 0)
        goto release;
    double transit = now * (double)clock_rate - (double)ts;
    if (field_set_double(stats, R_S_TRANSIT, transit) < 0)
        goto release;
    if (transit_last != Py_None) {
        double d = fabs(transit - PyFloat_AS_DOUBLE(transit_last));
        if (d < (double)(clock_rate * 10)) {
            double j = PyFloat_AS_DOUBLE(jitter);
            if (field_set_double(stats, R_S_JITTER, j + (d - j) / 16.0) < 0)
                goto release;
        }
    }
    Py_INCREF(nowobj);
    field_put(stream, R_LAST_PACKET, nowobj);
    if (field_add(stream, R_WBYTES, size) < 0 || field_add(stream, R_WPACKETS, 1) < 0)
        goto release;
    if (wstart == Py_None) { /* closed by RecvStream.measure(), on the control task */
        Py_INCREF(nowobj);
        field_put(stream, R_WSTART, nowobj);
    }
    if (level >= 0) {
        PyObject *who = FIELD(producer, R_PARTICIPANT);
        int rc = observe_level(speakers, who, level);
        if (rc == 0) {
            PyObject *v = PyLong_FromLong(level);
            if (v == NULL)
                goto release;
            rc = who == NULL ? -1 : call_void(speakers, name_observe, who, v, NULL);
            Py_DECREF(v);
        }
        if (rc < 0) {
            if (who == NULL)
                PyErr_SetString(PyExc_AttributeError, "participant_id");
            goto release;
        }
    }

    /* _deliver */
    if ((ext_seq_obj = PyLong_FromLongLong(ext_seq)) == NULL)
        goto release;
    Py_ssize_t slot = (Py_ssize_t)(ext_seq & cache_mask);
    Py_INCREF(f->data);
    PyList_SetItem(cache, slot, f->data);
    Py_INCREF(ext_seq_obj);
    PyList_SetItem(cache_seq, slot, ext_seq_obj);
    if (f->marker && (field_add(stream, R_FRAMES, 1) < 0 || field_add(stream, R_WFRAMES, 1) < 0))
        goto done;
    int keyframe = 0;
    if (is_video == Py_True) {
        const unsigned char *payload = (const unsigned char *)PyBytes_AS_STRING(f->data) + f->start;
        if (check == vp8_check) {
            /* _vp8_keyframe, here: only the first packet of partition 0 can start one. */
            long width = 0, height = 0;
            if ((payload[0] & 0x10) && !(payload[0] & 0x07))
                keyframe = vp8_keyframe(payload, f->end - f->start, &width, &height);
            if (width && (field_set_ll(stream, R_WIDTH, width) < 0 ||
                          field_set_ll(stream, R_HEIGHT, height) < 0))
                goto done;
        }
        else {
            /* Any other codec's check is asked every time. */
            PyObject *pkt = fan_pkt(f);
            PyObject *r = pkt == NULL ? NULL : PyObject_CallFunctionObjArgs(check, stream, pkt, NULL);
            if (r == NULL)
                goto done;
            keyframe = PyObject_IsTrue(r);
            Py_DECREF(r);
            if (keyframe < 0)
                goto done;
        }
        if (keyframe) {
            if (call_void(stream, name_keyframe_arrived, nowobj, NULL, NULL) < 0)
                goto done;
        }
        else if (FIELD(keyframes, R_K_PENDING) == Py_True &&
                 call_void(stream, name_keyframe_due, nowobj, NULL, NULL) < 0)
            goto done;
    }
    f->stream = stream;
    f->ext_seq = ext_seq;
    f->ext_ts = ext_ts;
    f->now = nowobj;
    f->ast24 = ast24_at(now);
    PyObject *pyargs[6] = {stream, f->pkt, ext_seq_obj, NULL, keyframe ? Py_True : Py_False,
                           nowobj};
    if (fan_out(consumers, f, 1, pyargs) < 0)
        goto done;

    /* NACK tracking: in order and nothing missing is the common case; anything else is
     * NackTracker.on_packet's. */
    if (nacks != Py_None) {
        long long highest;
        PyObject *missing = FIELD(nacks, R_N_MISSING);
        int python = 1;
        if (missing != NULL && PyDict_CheckExact(missing) && PyDict_GET_SIZE(missing) == 0 &&
            field_ll(nacks, R_N_HIGHEST, &highest)) {
            if (highest < 0 || ext_seq == highest + 1) {
                if (field_set_ll(nacks, R_N_HIGHEST, ext_seq) < 0)
                    goto done;
                python = 0;
            }
            else if (ext_seq <= highest)
                python = 0; /* a duplicate or late packet with nothing missing: no-op */
        }
        if (python) {
            PyObject *rtt = FIELD(producer, R_RTT);
            PyObject *lost = rtt == NULL ? NULL
                                         : call_method(nacks, name_on_packet, ext_seq_obj,
                                                       nowobj, rtt);
            if (lost == NULL) {
                if (rtt == NULL)
                    PyErr_SetString(PyExc_AttributeError, "rtt");
                goto done;
            }
            int any = PyObject_IsTrue(lost);
            int bad = any < 0 || (any && call_void(stream, name_nack_upstream, lost, NULL,
                                                   NULL) < 0);
            Py_DECREF(lost);
            if (bad)
                goto done;
        }
        if (FIELD(nacks, R_N_KEYFRAME) != Py_False) {
            PyObject *take = call_method(nacks, name_take_keyframe, NULL, NULL, NULL);
            if (take == NULL)
                goto done;
            int wanted = PyObject_IsTrue(take);
            Py_DECREF(take);
            if (wanted < 0 ||
                (wanted && call_void(stream, name_request_keyframe, nowobj, NULL, NULL) < 0))
                goto done;
        }
    }
    rc = 1;
done:
release:
    Py_XDECREF(ext_seq_obj);
    for (size_t h = 0; h < sizeof(held) / sizeof(held[0]); h++)
        Py_XDECREF(held[h]);
    return rc;
}

static PyObject *
receive(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "receive takes 3 arguments");
        return NULL;
    }
    Fan f = {0};
    int r = configured && packet_type != NULL && fan_packet(&f, args[1]) && fan_numbers(&f)
                ? receive_plain(args[0], &f, args[2])
                : 0;
    if (r < 0)
        return NULL;
    if (r == 0) {
        if (name_on_rtp == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "configure() was not called");
            return NULL;
        }
        return call_method(args[0], name_on_rtp, args[1], args[2], NULL);
    }
    Py_RETURN_NONE;
}

/* -- Receiver --------------------------------------------------------------------------
 *
 * Receiver(original, on_rtp, on_rtcp, refresh, fd, observe, every, srtp_error, failed,
 *          streams)
 * .datagram_received(data, addr): what aiortc_adapter._fast_path's Python closure did for
 * each datagram of an ICE socket, without a Python frame: SRTP and SRTCP (first byte
 * 128-191, RFC 7983) are unprotected and handed on; anything else (STUN, DTLS) goes to
 * the protocol's own ``original``. ``refresh()`` gives the receiving session's unprotector
 * (an Input) once DTLS made it, None before. Every ``every``-th RTP packet is a
 * forwarding-latency sample: if it led to a send, ``observe(seconds)`` gets the time from
 * the kernel's receive stamp of the datagram on socket ``fd`` (SIOCGSTAMP; -1: no socket,
 * no samples; the first stamp asked for only switches stamps on) to after the send. With
 * ``streams`` (a
 * publisher's ssrc -> RecvStream dict, the very one it updates) a media packet of a known
 * stream with the codec's own payload type is parsed and taken by receive() here; any
 * other, by ``on_rtp(plain, 0)``. ``srtp_error()`` counts a datagram libsrtp refused;
 * ``failed(exception)`` counts and logs an Exception a handler raised (it must not end
 * the socket's callback). */

typedef struct {
    PyObject_HEAD
    PyObject *rx, *original, *on_rtp, *on_rtcp, *refresh, *observe, *srtp_error, *failed,
        *streams;
    long every, countdown;
    int fd, stamping;
    /* The peer's consent checks, answered here (answer_checks): USERNAME expected, our ICE
     * password, the nominated pair's remote address, our ICE role; checks answered. */
    PyObject *ice_user, *ice_key;
    struct sockaddr_storage ice_peer;
    int ice_controlling;
    long long checks;
} Receiver;

static int
Receiver_traverse(Receiver *self, visitproc visit, void *arg)
{
    Py_VISIT(self->rx);
    Py_VISIT(self->original);
    Py_VISIT(self->on_rtp);
    Py_VISIT(self->on_rtcp);
    Py_VISIT(self->refresh);
    Py_VISIT(self->observe);
    Py_VISIT(self->srtp_error);
    Py_VISIT(self->failed);
    Py_VISIT(self->streams);
    return 0;
}

static int
Receiver_clear(Receiver *self)
{
    Py_CLEAR(self->rx);
    Py_CLEAR(self->original);
    Py_CLEAR(self->on_rtp);
    Py_CLEAR(self->on_rtcp);
    Py_CLEAR(self->refresh);
    Py_CLEAR(self->observe);
    Py_CLEAR(self->srtp_error);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->streams);
    Py_CLEAR(self->ice_user);
    Py_CLEAR(self->ice_key);
    return 0;
}

static void
Receiver_dealloc(Receiver *self)
{
    PyObject_GC_UnTrack(self);
    Receiver_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Receiver_init(Receiver *self, PyObject *args, PyObject *kwds)
{
    PyObject *original, *on_rtp, *on_rtcp, *refresh, *observe, *srtp_error, *failed, *streams;
    long every;
    int fd;
    if (!PyArg_ParseTuple(args, "OOOOiOlOOO:Receiver", &original, &on_rtp, &on_rtcp, &refresh,
                          &fd, &observe, &every, &srtp_error, &failed, &streams))
        return -1;
    if (every < 1) {
        PyErr_SetString(PyExc_ValueError, "every must be at least 1");
        return -1;
    }
    if (streams != Py_None && !PyDict_CheckExact(streams)) {
        PyErr_SetString(PyExc_TypeError, "streams must be a dict or None");
        return -1;
    }
    PyObject *objs[] = {original, on_rtp, on_rtcp, refresh, observe, srtp_error, failed};
    PyObject **slots[] = {&self->original, &self->on_rtp, &self->on_rtcp, &self->refresh,
                          &self->observe, &self->srtp_error, &self->failed};
    for (size_t i = 0; i < sizeof(objs) / sizeof(objs[0]); i++) {
        Py_INCREF(objs[i]);
        Py_XSETREF(*slots[i], objs[i]);
    }
    Py_CLEAR(self->streams);
    if (streams != Py_None) {
        Py_INCREF(streams);
        self->streams = streams;
    }
    Py_CLEAR(self->rx);
    self->every = self->countdown = every;
    self->fd = fd < 0 ? -1 : fd;
    self->stamping = 0;
    return 0;
}

/* An exception raised while handling a datagram: an Exception goes to ``failed`` and is
 * done with (0); anything else (KeyboardInterrupt, ...) stays raised (-1). */
static int
hand_failure(PyObject *failed)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *r = PyObject_CallOneArg(failed, value ? value : Py_None);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int
receiver_failed(Receiver *self)
{
    return hand_failure(self->failed);
}

static PyObject *
call_rx(PyObject *rx, int rtcp, PyObject *data)
{
    if (Py_IS_TYPE(rx, &InputType))
        return input_run((Input *)rx, data, rtcp ? ((Input *)rx)->unprotect_rtcp
                                                  : ((Input *)rx)->unprotect);
    return PyObject_CallMethod(rx, rtcp ? "unprotect_rtcp" : "unprotect", "O", data);
}

/* time.monotonic(), as the Python paths read it. */
static double
monotonic_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* streams[ssrc] (borrowed) into ``*out``: 1 found, 0 not, -1 error. */
static int
stream_of(PyObject *streams, unsigned long ssrc, PyObject **out)
{
    PyObject *key = PyLong_FromUnsignedLong(ssrc);
    if (key == NULL)
        return -1;
    *out = PyDict_GetItemWithError(streams, key);
    Py_DECREF(key);
    if (*out == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return 1;
}

/* A media packet of a known stream with the codec's own payload type, read in C (no
 * packet object unless a Python path needs one): 1 taken, 0 not (someone else's), -1
 * error. ``now``: the arrival time, or NULL for the monotonic clock's. */
static int
route_known(PyObject *streams, PyObject *plain, PyObject *now)
{
    Head h;
    if (!parse_head((const unsigned char *)PyBytes_AS_STRING(plain), PyBytes_GET_SIZE(plain), &h))
        return 0;
    PyObject *stream;
    int found = stream_of(streams, h.ssrc, &stream);
    if (found <= 0)
        return found;
    if (!IS(stream, K_STREAM) || !IS(FIELD(stream, R_PRODUCER), K_PRODUCER))
        return 0;
    PyObject *codec = FIELD(FIELD(stream, R_PRODUCER), R_CODEC);
    PyObject *pt = codec ? codec_attr(codec, C_PT, name_payload_type) : NULL;
    if (pt == NULL) {
        if (codec == NULL)
            PyErr_SetString(PyExc_AttributeError, "codec");
        return -1;
    }
    int same = pt_is(pt, h.pt);
    Py_DECREF(pt);
    if (same <= 0)
        return same;
    if (now == NULL) {
        if ((now = PyFloat_FromDouble(monotonic_seconds())) == NULL)
            return -1;
    }
    else
        Py_INCREF(now);
    Py_INCREF(stream);
    Fan f = {0};
    int r = fan_head(&f, plain, &h) ? receive_plain(stream, &f, now) : 0;
    if (r == 0) {
        PyObject *pkt = fan_pkt(&f);
        PyObject *res = pkt == NULL ? NULL : call_method(stream, name_on_rtp, pkt, now, NULL);
        r = res == NULL ? -1 : 1;
        Py_XDECREF(res);
    }
    fan_release(&f);
    Py_DECREF(stream);
    Py_DECREF(now);
    return r < 0 ? -1 : 1;
}

/* A plain RTP packet: 0 taken, -1 error. */
static int
receiver_route(Receiver *self, PyObject *plain)
{
    if (self->streams != NULL && configured && packet_type != NULL &&
        PyBytes_CheckExact(plain)) {
        int taken = route_known(self->streams, plain, NULL);
        if (taken != 0)
            return taken < 0 ? -1 : 0;
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return -1;
    PyObject *r = PyObject_CallFunctionObjArgs(self->on_rtp, plain, zero, NULL);
    Py_DECREF(zero);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* receiver_route, timed from ``arrived`` (the kernel's receive stamp, seconds since the
 * epoch; negative: ask the socket for its last one): 0 done (sampled or not), -1 error. */
static int
receiver_sample(Receiver *self, PyObject *plain, double arrived)
{
    struct timeval tv;
    if (arrived < 0.0 && self->fd >= 0 && ioctl(self->fd, SIOCGSTAMP, &tv) == 0) {
        if (self->stamping)
            arrived = (double)tv.tv_sec + tv.tv_usec * 1e-6;
        self->stamping = 1;
    }
    unsigned long long before = sent_total;
    if (receiver_route(self, plain) < 0)
        return -1;
    if (arrived < 0.0 || sent_total == before)
        return 0;
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    double delay = (double)t.tv_sec + t.tv_nsec * 1e-9 - arrived;
    if (!(delay >= 0.0 && delay < 10.0))
        return 0;
    PyObject *d = PyFloat_FromDouble(delay);
    if (d == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(self->observe, d);
    Py_DECREF(d);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* ("host", port) as asyncio gives a datagram's source (four items for IPv6). */
static PyObject *
addr_tuple(const struct sockaddr_storage *sa)
{
    char host[INET6_ADDRSTRLEN];
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo),
                             (unsigned int)a->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* original(data, addr), the address built from ``sa`` when the caller had none. */
static PyObject *
receiver_original(Receiver *self, PyObject *data, PyObject *addr,
                  const struct sockaddr_storage *sa)
{
    if (addr != NULL)
        return PyObject_CallFunctionObjArgs(self->original, data, addr, NULL);
    PyObject *built = addr_tuple(sa);
    if (built == NULL)
        return NULL;
    PyObject *r = PyObject_CallFunctionObjArgs(self->original, data, built, NULL);
    Py_DECREF(built);
    return r;
}

/* -- a publisher's sender reports, in C -------------------------------------------------
 *
 * A publisher sends an SR and its SDES for each of its streams about once a second;
 * PublisherTransport.handle_rtcp only notes each SR on its stream (RecvStream.
 * on_sender_report: the SR's NTP and RTP times and our arrival time, for RR's LSR/DLSR and
 * for lip sync), but parsing the compound and dispatching it in Python cost ~120 us of
 * thread CPU a packet, run cold. A compound of only well-formed SRs and SDES is noted here
 * the same way; anything else (another packet type, padding, a malformed part, a stream
 * whose SR a recording tap wants) goes whole to Python's on_rtcp, before anything is
 * changed. */

/* One SDES packet's chunks as rtcp._parse_sdes reads them: 1 well-formed, 0 not. */
static int
sdes_ok(const unsigned char *b, Py_ssize_t n, int count)
{
    Py_ssize_t pos = 0;
    for (int i = 0; i < count; i++) {
        if (pos + 4 > n)
            return 0;
        pos += 4;
        while (pos < n && b[pos]) {
            if (pos + 2 > n || pos + 2 + b[pos + 1] > n)
                return 0;
            pos += 2 + b[pos + 1];
        }
        if (pos >= n)
            return 0;
        pos = (pos + 4) & ~(Py_ssize_t)3;
    }
    return 1;
}

/* The SR's stream, if it is to be noted here: 1 (``*out`` set, or NULL: no such stream,
 * nothing to note), 0 Python's to do, -1 error. */
static int
sr_stream(PyObject *streams, unsigned long ssrc, PyObject **out)
{
    PyObject *stream;
    int found = stream_of(streams, ssrc, &stream);
    *out = NULL;
    if (found <= 0)
        return found < 0 ? -1 : 1;
    if (!IS(stream, K_STREAM) || !IS(FIELD(stream, R_PRODUCER), K_PRODUCER) ||
        !IS(FIELD(stream, R_STATS), K_RECV_STATS))
        return 0;
    PyObject *producer = FIELD(stream, R_PRODUCER);
    PyObject *taps = FIELD(producer, R_TAPS);
    if (taps == NULL || !PyList_CheckExact(taps))
        return 0;
    if (PyList_GET_SIZE(taps) > 0)
        return 0; /* a recording listens: Python's on_sender_report */
    *out = stream;
    return 1;
}

/* 1 noted here, 0 Python's (nothing changed), -1 error. ``now``: the arrival time, or
 * negative to read the monotonic clock once the compound is known to be one for here. */
static int
sender_reports(PyObject *streams, PyObject *plain, double now)
{
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(plain);
    Py_ssize_t n = PyBytes_GET_SIZE(plain), pos = 0;
    enum { MAX_SR = 8 };
    PyObject *found[MAX_SR];
    unsigned long long ntp[MAX_SR];
    unsigned long rtp_ts[MAX_SR];
    int srs = 0;
    if (n == 0)
        return 0;
    while (pos < n) {
        if (pos + 4 > n)
            return 0;
        unsigned char b0 = d[pos], type = d[pos + 1];
        Py_ssize_t end = pos + 4 + 4 * (Py_ssize_t)get16(d + pos + 2);
        int count = b0 & 0x1F;
        if (end > n || (b0 >> 6) != 2 || (b0 & 0x20))
            return 0;
        const unsigned char *body = d + pos + 4;
        Py_ssize_t len = end - pos - 4;
        if (type == 200) {
            if (len < 24 + 24 * (Py_ssize_t)count || srs == MAX_SR)
                return 0;
            int r = sr_stream(streams, get32(body), &found[srs]);
            if (r <= 0)
                return r;
            ntp[srs] = (unsigned long long)get32(body + 4) << 32 | get32(body + 8);
            rtp_ts[srs] = get32(body + 12);
            srs++;
        }
        else if (type != 202 || !sdes_ok(body, len, count))
            return 0;
        pos = end;
    }
    if (srs == 0)
        return 1; /* SDES alone: nothing to note */
    PyObject *arrival = PyFloat_FromDouble(now < 0.0 ? monotonic_seconds() : now);
    if (arrival == NULL)
        return -1;
    int rc = 1;
    for (int i = 0; i < srs && rc > 0; i++) {
        PyObject *stream = found[i];
        if (stream == NULL)
            continue;
        PyObject *stats = FIELD(stream, R_STATS);
        PyObject *sr = Py_BuildValue("(KkO)", ntp[i], rtp_ts[i], arrival);
        PyObject *middle = PyLong_FromUnsignedLong((unsigned long)((ntp[i] >> 16) & 0xFFFFFFFFu));
        if (sr == NULL || middle == NULL) {
            Py_XDECREF(sr);
            Py_XDECREF(middle);
            rc = -1;
            break;
        }
        field_put(stream, R_LAST_SR, sr);
        field_put(stats, R_S_SR_MIDDLE, middle);
        Py_INCREF(arrival);
        field_put(stats, R_S_SR_ARRIVAL, arrival);
    }
    Py_DECREF(arrival);
    return rc;
}

/* sender_reports(streams, plain, now): what a Receiver with ``streams`` does with an
 * unprotected RTCP packet at the time ``now``: True if the SRs were noted here (else the
 * Receiver hands it to on_rtcp; here, to the caller). */
static PyObject *
sender_reports_fn(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]) ||
        !PyFloat_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "sender_reports(streams: dict, plain: bytes, now: float)");
        return NULL;
    }
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure() was not called");
        return NULL;
    }
    int r = sender_reports(args[0], args[1], PyFloat_AS_DOUBLE(args[2]));
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

/* -- the peer's consent checks, answered in C ----------------------------------------
 *
 * Once ICE has connected, the peer's Binding requests on the nominated pair (RFC 7675
 * consent checks, every few seconds on each connection) are answered here rather than by
 * aioice (a parse, two HMACs and a response built in Python, ~0.5 ms cold). Only a request
 * that aioice would answer the same way without changing any state is taken: a Binding
 * request with the magic cookie, from the nominated pair's remote address, whose USERNAME
 * is exactly "our ufrag:their ufrag", whose MESSAGE-INTEGRITY verifies with our password,
 * whose FINGERPRINT (if any) is right, with no role conflict and no attribute this does
 * not know. Anything else goes to aioice as before. The answer is what aioice sends: a
 * Binding success response with XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY and FINGERPRINT. */

#define STUN_COOKIE 0x2112A442u
#define STUN_HEADER 20

#define STUN_FP_XOR 0x5354554Eu

/* hashlib's HMAC and binascii's CRC-32, C functions both, called on views of our buffers
 * (no copy); imported by answer_checks, before any check can be answered. */
static PyObject *hmac_digest_fn, *crc32_fn, *name_sha1;

static PyObject *
view_of(const unsigned char *p, Py_ssize_t n)
{
    return PyMemoryView_FromMemory((char *)p, n, PyBUF_READ);
}

/* HMAC-SHA1 of ``n`` bytes at ``p`` into out[20]: 0, or -1 error. */
static int
hmac_sha1(PyObject *key, const unsigned char *p, Py_ssize_t n, unsigned char *out)
{
    PyObject *msg = view_of(p, n);
    if (msg == NULL)
        return -1;
    PyObject *args[] = {key, msg, name_sha1};
    PyObject *d = PyObject_Vectorcall(hmac_digest_fn, args, 3, NULL);
    Py_DECREF(msg);
    if (d == NULL)
        return -1;
    int ok = PyBytes_Check(d) && PyBytes_GET_SIZE(d) == 20;
    if (ok)
        memcpy(out, PyBytes_AS_STRING(d), 20);
    Py_DECREF(d);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "hmac_digest gave no SHA-1 digest");
        return -1;
    }
    return 0;
}

/* A STUN FINGERPRINT of ``n`` bytes at ``p`` (CRC-32 xor STUN_FP_XOR): 0, or -1 error. */
static int
stun_fingerprint(const unsigned char *p, Py_ssize_t n, uint32_t *out)
{
    PyObject *msg = view_of(p, n);
    if (msg == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(crc32_fn, msg);
    Py_DECREF(msg);
    if (r == NULL)
        return -1;
    unsigned long crc = PyLong_AsUnsignedLong(r);
    Py_DECREF(r);
    if (crc == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint32_t)crc ^ STUN_FP_XOR;
    return 0;
}

/* The functions above, once: 0, or -1 error. */
static int
stun_init(void)
{
    const char *from[] = {"_hashlib", "binascii"}, *name[] = {"hmac_digest", "crc32"};
    PyObject **fn[] = {&hmac_digest_fn, &crc32_fn};
    for (int i = 0; i < 2; i++) {
        if (*fn[i] != NULL)
            continue;
        PyObject *mod = PyImport_ImportModule(from[i]);
        if (mod == NULL)
            return -1;
        *fn[i] = PyObject_GetAttrString(mod, name[i]);
        Py_DECREF(mod);
        if (*fn[i] == NULL)
            return -1;
    }
    if (name_sha1 == NULL && (name_sha1 = PyUnicode_InternFromString("sha1")) == NULL)
        return -1;
    return 0;
}

static int
same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return 0;
}

/* The response to a consent check ``d`` (``n`` bytes) from ``sa`` into out[92]: its length,
 * 0 if the request is not one to answer here, -1 error. */
static int
stun_reply(Receiver *self, const unsigned char *d, Py_ssize_t n,
           const struct sockaddr_storage *sa, unsigned char *out)
{
    if (self->ice_user == NULL || n < STUN_HEADER || n > 1024 || (d[0] & 0xC0) ||
        get16(d) != 0x0001 || get32(d + 4) != STUN_COOKIE ||
        (Py_ssize_t)get16(d + 2) + STUN_HEADER != n || (n & 3) ||
        !same_addr(sa, &self->ice_peer))
        return 0;
    const unsigned char *user = NULL, *mi = NULL, *fp = NULL;
    uint32_t crc;
    unsigned user_len = 0;
    Py_ssize_t pos = STUN_HEADER;
    while (pos + 4 <= n) {
        unsigned type = get16(d + pos), len = get16(d + pos + 2);
        Py_ssize_t next = pos + 4 + ((len + 3) & ~3u);
        if (next > n)
            return 0;
        if (fp != NULL || (mi != NULL && type != 0x8028))
            return 0; /* FINGERPRINT last; after MESSAGE-INTEGRITY only FINGERPRINT */
        switch (type) {
        case 0x0006: /* USERNAME */
            user = d + pos + 4;
            user_len = len;
            break;
        case 0x0008: /* MESSAGE-INTEGRITY */
            if (len != 20)
                return 0;
            mi = d + pos;
            break;
        case 0x8028: /* FINGERPRINT */
            if (len != 4)
                return 0;
            if (stun_fingerprint(d, pos, &crc) < 0)
                return -1;
            if (get32(d + pos + 4) != crc)
                return 0;
            fp = d + pos;
            break;
        case 0x8029: /* ICE-CONTROLLED: a conflict if we are controlled */
            if (!self->ice_controlling)
                return 0;
            break;
        case 0x802A: /* ICE-CONTROLLING: a conflict if we are controlling */
            if (self->ice_controlling)
                return 0;
            break;
        case 0x0024: /* PRIORITY */
        case 0x0025: /* USE-CANDIDATE: the pair is the nominated one already */
            break;
        default:
            if (type < 0x8000)
                return 0; /* comprehension-required and unknown here: aioice's call */
        }
        pos = next;
    }
    if (pos != n || user == NULL || mi == NULL ||
        (Py_ssize_t)user_len != PyBytes_GET_SIZE(self->ice_user) ||
        memcmp(user, PyBytes_AS_STRING(self->ice_user), user_len) != 0)
        return 0;
    /* MESSAGE-INTEGRITY: over the message up to it, its length as if it ended after it. */
    Py_ssize_t signed_len = mi - d;
    unsigned char buf[1024 + 4];
    memcpy(buf, d, (size_t)signed_len);
    put16(buf + 2, (unsigned)(signed_len - STUN_HEADER + 24));
    unsigned char mac[20];
    if (hmac_sha1(self->ice_key, buf, signed_len, mac) < 0)
        return -1;
    unsigned diff = 0;
    for (int i = 0; i < 20; i++)
        diff |= (unsigned)(mac[i] ^ mi[4 + i]);
    if (diff)
        return 0;
    /* The response: header, XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT. */
    unsigned char *p = out;
    put16(p, 0x0101);
    memcpy(p + 4, d + 4, 16); /* cookie and transaction id */
    p += STUN_HEADER;
    unsigned char xpad[16];
    put32(xpad, STUN_COOKIE);
    memcpy(xpad + 4, d + 8, 12);
    const unsigned char *ip;
    int iplen;
    unsigned port;
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        ip = (const unsigned char *)&a->sin_addr;
        iplen = 4;
        port = ntohs(a->sin_port);
    }
    else {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        ip = (const unsigned char *)&a->sin6_addr;
        iplen = 16;
        port = ntohs(a->sin6_port);
    }
    put16(p, 0x0020);
    put16(p + 2, (unsigned)(4 + iplen));
    p[4] = 0;
    p[5] = iplen == 4 ? 1 : 2;
    put16(p + 6, port ^ (STUN_COOKIE >> 16));
    for (int i = 0; i < iplen; i++)
        p[8 + i] = ip[i] ^ xpad[i];
    p += 8 + iplen;
    int body = (int)(p - out) - STUN_HEADER;
    put16(out + 2, (unsigned)(body + 24));
    if (hmac_sha1(self->ice_key, out, p - out, mac) < 0)
        return -1;
    put16(p, 0x0008);
    put16(p + 2, 20);
    memcpy(p + 4, mac, 20);
    p += 24;
    put16(out + 2, (unsigned)(body + 24 + 8));
    if (stun_fingerprint(out, p - out, &crc) < 0)
        return -1;
    put16(p, 0x8028);
    put16(p + 2, 4);
    put32(p + 4, crc);
    p += 8;
    return (int)(p - out);
}

/* A consent check answered and counted here: 1; not one for here: 0; -1 error. */
static int
receiver_stun(Receiver *self, PyObject *data, const struct sockaddr_storage *sa)
{
    unsigned char out[92];
    int len = stun_reply(self, (const unsigned char *)PyBytes_AS_STRING(data),
                         PyBytes_GET_SIZE(data), sa, out);
    if (len <= 0)
        return len;
    socklen_t salen = sa->ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                               : sizeof(struct sockaddr_in6);
    /* A full send buffer loses the answer as the network could: the peer checks again. */
    if (self->fd >= 0)
        (void)sendto(self->fd, out, (size_t)len, 0, (const struct sockaddr *)sa, salen);
    self->checks++;
    return 1;
}

/* ("host", port) into a sockaddr: 0, or -1 with ValueError. */
static int
parse_addr(PyObject *host, int port, struct sockaddr_storage *sa)
{
    const char *h = PyUnicode_AsUTF8(host);
    if (h == NULL)
        return -1;
    socklen_t len;
    if (sockaddr_of(h, port, sa, &len))
        return 0;
    PyErr_SetString(PyExc_ValueError, "not an IP address and port");
    return -1;
}

/* answer_checks(user, key, host, port, controlling), or answer_checks(None) to stop. */
static PyObject *
Receiver_answer_checks(Receiver *self, PyObject *args)
{
    PyObject *user, *key = NULL, *host = NULL;
    int port = -1, controlling = 0;
    if (!PyArg_ParseTuple(args, "O|SUip:answer_checks", &user, &key, &host, &port,
                          &controlling))
        return NULL;
    if (user == Py_None) {
        Py_CLEAR(self->ice_user);
        Py_CLEAR(self->ice_key);
        Py_RETURN_NONE;
    }
    if (!PyBytes_Check(user) || key == NULL || host == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "answer_checks(user: bytes, key: bytes, host: str, port: int, "
                        "controlling: bool) or answer_checks(None)");
        return NULL;
    }
    if (stun_init() < 0)
        return NULL;
    struct sockaddr_storage sa;
    if (parse_addr(host, port, &sa) < 0)
        return NULL;
    self->ice_peer = sa;
    self->ice_controlling = controlling;
    Py_INCREF(user);
    Py_XSETREF(self->ice_user, user);
    Py_INCREF(key);
    Py_XSETREF(self->ice_key, key);
    Py_RETURN_NONE;
}

/* stun_reply(data, host, port) -> bytes | None: the answer the Receiver would send to a
 * datagram from (host, port), without sending it or counting it (for tests). */
static PyObject *
Receiver_stun_reply(Receiver *self, PyObject *args)
{
    PyObject *data, *host;
    int port;
    if (!PyArg_ParseTuple(args, "SUi:stun_reply", &data, &host, &port))
        return NULL;
    struct sockaddr_storage sa;
    if (parse_addr(host, port, &sa) < 0)
        return NULL;
    unsigned char out[92];
    int len = stun_reply(self, (const unsigned char *)PyBytes_AS_STRING(data),
                         PyBytes_GET_SIZE(data), &sa, out);
    if (len < 0)
        return NULL;
    if (len == 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)out, len);
}

/* One datagram: ``addr`` its source, or NULL and ``sa`` (then the tuple is made only if
 * ``original`` needs it); ``arrived`` its kernel receive stamp, or negative. */
static PyObject *
receiver_handle(Receiver *self, PyObject *data, PyObject *addr,
                const struct sockaddr_storage *sa, double arrived)
{
    if (!PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) < 1 ||
        (unsigned char)PyBytes_AS_STRING(data)[0] < 128 ||
        (unsigned char)PyBytes_AS_STRING(data)[0] > 191) {
        if (sa != NULL && self->ice_user != NULL && PyBytes_CheckExact(data)) {
            int r = receiver_stun(self, data, sa);
            if (r < 0)
                return NULL;
            if (r > 0)
                Py_RETURN_NONE;
        }
        return receiver_original(self, data, addr, sa);
    }
    if (self->rx == NULL) {
        PyObject *rx = PyObject_CallNoArgs(self->refresh);
        if (rx == NULL)
            return NULL;
        if (rx == Py_None) {
            Py_DECREF(rx);
            return receiver_original(self, data, addr, sa);
        }
        self->rx = rx;
    }
    PyObject *rx = self->rx;
    Py_INCREF(rx);
    unsigned char second = PyBytes_GET_SIZE(data) > 1 ? (unsigned char)PyBytes_AS_STRING(data)[1]
                                                       : 0;
    int rtcp = PyBytes_GET_SIZE(data) > 1 && second > 191 && second < 224;
    PyObject *plain = call_rx(rx, rtcp, data);
    Py_DECREF(rx);
    int rc = 0;
    if (plain == NULL)
        rc = -1;
    else if (plain == Py_None) {
        PyObject *r = PyObject_CallNoArgs(self->srtp_error);
        rc = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
    else if (rtcp) {
        int taken = 0;
        if (self->streams != NULL && configured && PyBytes_CheckExact(plain))
            taken = sender_reports(self->streams, plain, -1.0);
        if (taken < 0)
            rc = -1;
        else if (taken == 0) {
            PyObject *r = PyObject_CallOneArg(self->on_rtcp, plain);
            rc = r == NULL ? -1 : 0;
            Py_XDECREF(r);
        }
    }
    else if (--self->countdown > 0)
        rc = receiver_route(self, plain);
    else {
        self->countdown = self->every;
        rc = receiver_sample(self, plain, arrived);
    }
    Py_XDECREF(plain);
    if (rc < 0 && receiver_failed(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* route(streams, plain, now): what a Receiver with ``streams`` does with an unprotected
 * RTP packet, at the time ``now``: True if a known stream took it (the rest goes to the
 * Receiver's on_rtp; here, to the caller). */
static PyObject *
route(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]) ||
        !PyFloat_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "route(streams: dict, plain: bytes, now: float)");
        return NULL;
    }
    if (!configured || packet_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() was not called");
        return NULL;
    }
    int r = route_known(args[0], args[1], args[2]);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *
Receiver_datagram_received(Receiver *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "datagram_received takes 2 arguments");
        return NULL;
    }
    return receiver_handle(self, args[0], args[1], NULL, -1.0);
}

static PyMethodDef Receiver_methods[] = {
    {"datagram_received", (PyCFunction)(void (*)(void))Receiver_datagram_received,
     METH_FASTCALL, "datagram_received(data, addr): one datagram of the ICE socket."},
    {"answer_checks", (PyCFunction)Receiver_answer_checks, METH_VARARGS,
     "answer_checks(user, key, host, port, controlling): answer the peer's consent checks "
     "from (host, port) here; answer_checks(None): leave them all to aioice."},
    {"stun_reply", (PyCFunction)Receiver_stun_reply, METH_VARARGS,
     "stun_reply(data, host, port) -> bytes | None: the answer to a datagram, unsent."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Receiver_members[] = {
    {"checks", T_LONGLONG, offsetof(Receiver, checks), READONLY,
     "consent checks answered here"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mediaserver.sfu._fastpath.Receiver",
    .tp_basicsize = sizeof(Receiver),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A socket's datagrams: SRTP/SRTCP unprotected and handed on, the rest to the "
              "protocol's own handler.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Receiver_init,
    .tp_dealloc = (destructor)Receiver_dealloc,
    .tp_traverse = (traverseproc)Receiver_traverse,
    .tp_clear = (inquiry)Receiver_clear,
    .tp_methods = Receiver_methods,
    .tp_members = Receiver_members,
};

/* -- Reader ----------------------------------------------------------------------------
 *
 * Reader(fd, protocol, failed).readable(): the event loop's reader callback of a media
 * socket the server owns (mediasocket.MediaTransport), in place of uvloop's UDP
 * transport. Up to READ_BATCHES x READ_BATCH datagrams a call, READ_BATCH per recvmmsg, so
 * a wake that finds one datagram costs one system call (uvloop's reads end on an EAGAIN),
 * and no address tuple is made for SRTP/SRTCP. Each datagram goes to the handler
 * ``protocol.datagram_received`` holds at that moment: a Receiver's is called in C with
 * the datagram's kernel receive stamp (SO_TIMESTAMP, switched on here), any
 * other as ``handler(data, (host, port))``. A handler's Exception goes to
 * ``failed(exception)``; a receive error other than "nothing left" to
 * ``protocol.error_received(exc)``, as asyncio does. */

#define READ_BATCH 16
#define READ_BATCHES 4
#define READ_SIZE 65536

/* One set of buffers for every Reader: the loop's thread holds the GIL while it reads, and
 * a batch is copied into bytes before any handler runs (the addresses stay in the call's
 * own frame, which only its next recvmmsg overwrites). */
static unsigned char read_bufs[READ_BATCH][READ_SIZE];
static union {
    char buf[CMSG_SPACE(sizeof(struct timeval))];
    struct cmsghdr align;
} read_ctrl[READ_BATCH];

typedef struct {
    PyObject_HEAD
    PyObject *protocol, *failed;
    int fd;
    unsigned long long datagrams, reads;
} Reader;

static PyObject *name_datagram_received, *name_error_received;

static int
Reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->protocol);
    Py_VISIT(self->failed);
    return 0;
}

static int
Reader_clear(Reader *self)
{
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->failed);
    return 0;
}

static void
Reader_dealloc(Reader *self)
{
    PyObject_GC_UnTrack(self);
    Reader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Reader_init(Reader *self, PyObject *args, PyObject *kwds)
{
    int fd;
    PyObject *protocol, *failed;
    if (!PyArg_ParseTuple(args, "iOO:Reader", &fd, &protocol, &failed))
        return -1;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "fd must not be negative");
        return -1;
    }
    int one = 1; /* every datagram's kernel receive stamp, as a control message */
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMP, &one, sizeof(one)) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    Py_INCREF(protocol);
    Py_XSETREF(self->protocol, protocol);
    Py_INCREF(failed);
    Py_XSETREF(self->failed, failed);
    self->fd = fd;
    return 0;
}

static int
reader_failed(Reader *self)
{
    return hand_failure(self->failed);
}

/* One datagram to the protocol's current handler: 0 done, -1 error to raise. */
static int
reader_dispatch(Reader *self, PyObject *data, const struct sockaddr_storage *sa,
                double arrived)
{
    PyObject *handler = PyObject_GetAttr(self->protocol, name_datagram_received);
    if (handler == NULL)
        return reader_failed(self);
    PyObject *r;
    if (PyCFunction_Check(handler) && PyCFunction_GET_SELF(handler) != NULL &&
        Py_IS_TYPE(PyCFunction_GET_SELF(handler), &ReceiverType))
        r = receiver_handle((Receiver *)PyCFunction_GET_SELF(handler), data, NULL, sa,
                            arrived);
    else {
        PyObject *addr = addr_tuple(sa);
        r = addr == NULL ? NULL : PyObject_CallFunctionObjArgs(handler, data, addr, NULL);
        Py_XDECREF(addr);
    }
    Py_DECREF(handler);
    if (r == NULL)
        return reader_failed(self);
    Py_DECREF(r);
    return 0;
}

static PyObject *
Reader_readable(Reader *self, PyObject *Py_UNUSED(ignored))
{
    struct mmsghdr msgs[READ_BATCH];
    struct iovec iov[READ_BATCH];
    struct sockaddr_storage addrs[READ_BATCH];
    for (int round = 0; round < READ_BATCHES && self->fd >= 0; round++) {
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < READ_BATCH; i++) {
            iov[i].iov_base = read_bufs[i];
            iov[i].iov_len = READ_SIZE;
            msgs[i].msg_hdr.msg_name = &addrs[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = read_ctrl[i].buf;
            msgs[i].msg_hdr.msg_controllen = sizeof(read_ctrl[i].buf);
        }
        int n = recvmmsg(self->fd, msgs, READ_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            /* An ICMP error reported on the socket (ECONNREFUSED, ...), or a socket gone:
             * the OSError to protocol.error_received, as a handler's Exception to failed. */
            PyErr_SetFromErrno(PyExc_OSError);
            PyObject *on_error = PyObject_GetAttr(self->protocol, name_error_received);
            int rc = on_error == NULL ? -1 : hand_failure(on_error);
            Py_XDECREF(on_error);
            if (rc < 0 && reader_failed(self) < 0)
                return NULL;
            break;
        }
        self->reads++;
        PyObject *datas[READ_BATCH];
        double stamps[READ_BATCH];
        for (int i = 0; i < n; i++) {
            datas[i] = PyBytes_FromStringAndSize((const char *)read_bufs[i],
                                                 (Py_ssize_t)msgs[i].msg_len);
            if (datas[i] == NULL) {
                for (int j = 0; j < i; j++)
                    Py_DECREF(datas[j]);
                return NULL;
            }
            stamps[i] = -1.0;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c != NULL;
                 c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMP) {
                    struct timeval tv;
                    memcpy(&tv, CMSG_DATA(c), sizeof(tv));
                    stamps[i] = (double)tv.tv_sec + tv.tv_usec * 1e-6;
                }
            }
        }
        self->datagrams += (unsigned long long)n;
        for (int i = 0; i < n; i++) {
            int rc = reader_dispatch(self, datas[i], &addrs[i], stamps[i]);
            Py_DECREF(datas[i]);
            if (rc < 0) {
                for (int j = i + 1; j < n; j++)
                    Py_DECREF(datas[j]);
                return NULL;
            }
        }
        if (n < READ_BATCH)
            break; /* drained: no further system call to learn it */
    }
    Py_RETURN_NONE;
}

static PyObject *
Reader_forget(Reader *self, PyObject *Py_UNUSED(ignored))
{
    self->fd = -1;
    Py_RETURN_NONE;
}

static PyObject *
Reader_get_datagrams(Reader *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->datagrams);
}

static PyObject *
Reader_get_reads(Reader *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->reads);
}

static PyMethodDef Reader_methods[] = {
    {"readable", (PyCFunction)Reader_readable, METH_NOARGS,
     "readable(): read what the socket holds and hand each datagram on."},
    {"forget", (PyCFunction)Reader_forget, METH_NOARGS,
     "forget(): the socket is closing; read nothing more from it."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Reader_getset[] = {
    {"datagrams", (getter)Reader_get_datagrams, NULL, "datagrams read so far", NULL},
    {"reads", (getter)Reader_get_reads, NULL, "recvmmsg calls that returned datagrams", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mediaserver.sfu._fastpath.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A media socket's reader callback: recvmmsg, then each datagram to the "
              "protocol's handler.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_traverse = (traverseproc)Reader_traverse,
    .tp_clear = (inquiry)Reader_clear,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
};

static PyMethodDef module_methods[] = {
    {"set_packet_class", (PyCFunction)set_packet_class, METH_VARARGS,
     "set_packet_class(cls, python_parser): what parse_rtp makes, and falls back to."},
    {"native_base", (PyCFunction)native_base, METH_VARARGS,
     "native_base(name, fields) -> a base class holding the fields as C long longs."},
    {"parse_rtp", (PyCFunction)parse_rtp, METH_O,
     "parse_rtp(data) -> RtpPacket | None, as mediaserver.sfu.rtp's Python parser."},
    {"configure", (PyCFunction)configure, METH_VARARGS,
     "configure(classes, never, reorder_window, history_mask, count_failure, cache_mask, "
     "vp8_check, active_dbov): the classes (by name) and constants of the "
     "packet path."},
    {"receive", (PyCFunction)(void (*)(void))receive, METH_FASTCALL,
     "receive(stream, pkt, now): RecvStream.on_rtp, the common case in C."},
    {"sender_reports", (PyCFunction)(void (*)(void))sender_reports_fn, METH_FASTCALL,
     "sender_reports(streams, plain, now) -> bool: a publisher's SRs noted on their "
     "streams, as PublisherTransport.handle_rtcp does (False: the caller's to handle)."},
    {"route", (PyCFunction)(void (*)(void))route, METH_FASTCALL,
     "route(streams, plain, now) -> bool: a Receiver's path for a known stream's packet."},
    {"fanout", (PyCFunction)(void (*)(void))fanout, METH_FASTCALL,
     "fanout(consumers, stream, pkt, ext_seq, ext_ts, keyframe, now): "
     "Consumer.forward for each consumer, the plain ones in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mediaserver.sfu._fastpath",
    .m_doc = "SRTP unprotect on receipt; header, SRTP protect and send per forwarded packet.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    if (PyType_Ready(&OutputType) < 0 || PyType_Ready(&InputType) < 0 ||
        PyType_Ready(&ReceiverType) < 0 || PyType_Ready(&ReaderType) < 0 ||
        PyType_Ready(&HistoryType) < 0)
        return NULL;
    if ((name_datagram_received = PyUnicode_InternFromString("datagram_received")) == NULL ||
        (name_error_received = PyUnicode_InternFromString("error_received")) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&OutputType);
    Py_INCREF(&InputType);
    Py_INCREF(&ReceiverType);
    Py_INCREF(&ReaderType);
    Py_INCREF(&HistoryType);
    if (PyModule_AddObject(m, "Output", (PyObject *)&OutputType) < 0 ||
        PyModule_AddObject(m, "Input", (PyObject *)&InputType) < 0 ||
        PyModule_AddObject(m, "Receiver", (PyObject *)&ReceiverType) < 0 ||
        PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddObject(m, "History", (PyObject *)&HistoryType) < 0 ||
        PyModule_AddIntConstant(m, "ERR_SRTP", ERR_SRTP) < 0 ||
        PyModule_AddIntConstant(m, "ERR_SOCKET", ERR_SOCKET) < 0 ||
        PyModule_AddIntConstant(m, "ERR_SIZE", ERR_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PLAIN", MAX_PLAIN) < 0) {
        Py_DECREF(&OutputType);
        Py_DECREF(&InputType);
        Py_DECREF(&ReceiverType);
        Py_DECREF(&ReaderType);
        Py_DECREF(&HistoryType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
