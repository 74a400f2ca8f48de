/* Byte buffers, payload fields and frames of the guest protocol; console logging. */
#include "a3s.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int g_console = 2;
int g_debug = 0;

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q) {
		/* PID 1 cannot recover from OOM in a sane way; say so and stop. */
		static const char m[] = "a3s-init: out of memory\n";
		(void)!write(g_console, m, sizeof m - 1);
		abort();
	}
	return q;
}

void buf_put(struct buf *b, const void *d, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, d, n);
	b->len += n;
}

void buf_drop(struct buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
		if (b->cap > (1u << 16)) { /* give big buffers back once drained */
			free(b->p);
			b->p = NULL;
			b->cap = 0;
		}
		return;
	}
	memmove(b->p, b->p + n, b->len - n);
	b->len -= n;
}

void buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

void w_u8(struct buf *b, uint8_t v) { buf_put(b, &v, 1); }
void w_u16(struct buf *b, uint16_t v)
{
	unsigned char x[2] = {v >> 8, v};
	buf_put(b, x, 2);
}
void w_u32(struct buf *b, uint32_t v)
{
	unsigned char x[4] = {v >> 24, v >> 16, v >> 8, v};
	buf_put(b, x, 4);
}
void w_u64(struct buf *b, uint64_t v)
{
	w_u32(b, (uint32_t)(v >> 32));
	w_u32(b, (uint32_t)v);
}
void w_str(struct buf *b, const char *s, size_t n)
{
	w_u32(b, (uint32_t)n);
	buf_put(b, s, n);
}
void w_cstr(struct buf *b, const char *s) { w_str(b, s, strlen(s)); }
void w_cstrlist(struct buf *b, char *const *v)
{
	uint32_t n = 0;
	while (v && v[n])
		n++;
	w_u32(b, n);
	for (uint32_t i = 0; i < n; i++)
		w_cstr(b, v[i]);
}

/* One message with three descriptors (a process's stdio) attached (SCM_RIGHTS). */
ssize_t send_with_fds(int sock, const void *p, size_t n, const int fds[3])
{
	union { struct cmsghdr h; char b[CMSG_SPACE(3 * sizeof(int))]; } u;
	memset(&u, 0, sizeof u);
	struct iovec iov = {(void *)p, n};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b};
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET, c->cmsg_type = SCM_RIGHTS, c->cmsg_len = CMSG_LEN(3 * sizeof(int));
	memcpy(CMSG_DATA(c), fds, 3 * sizeof(int));
	ssize_t r;
	do
		r = sendmsg(sock, &m, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	return r;
}

/* The message's bytes (at most CAP), and FDS its three descriptors (close-on-exec), or
 * all -1 when it did not carry exactly three. */
ssize_t recv_with_fds(int sock, void *p, size_t cap, int fds[3])
{
	union { struct cmsghdr h; char b[CMSG_SPACE(3 * sizeof(int))]; } u;
	struct iovec iov = {p, cap};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof u.b};
	ssize_t n;
	do
		n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	fds[0] = fds[1] = fds[2] = -1;
	struct cmsghdr *c = n >= 0 ? CMSG_FIRSTHDR(&m) : NULL;
	if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(3 * sizeof(int)))
		memcpy(fds, CMSG_DATA(c), 3 * sizeof(int));
	return n;
}

static const unsigned char *take(struct rd *r, size_t n)
{
	if (r->bad || n > r->len - r->at) {
		r->bad = 1;
		return NULL;
	}
	const unsigned char *p = r->p + r->at;
	r->at += n;
	return p;
}

uint8_t r_u8(struct rd *r)
{
	const unsigned char *p = take(r, 1);
	return p ? p[0] : 0;
}
uint16_t r_u16(struct rd *r)
{
	const unsigned char *p = take(r, 2);
	return p ? (uint16_t)(p[0] << 8 | p[1]) : 0;
}
uint32_t r_u32(struct rd *r)
{
	const unsigned char *p = take(r, 4);
	return p ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3] : 0;
}
const unsigned char *r_take(struct rd *r, size_t n)
{
	return take(r, n);
}
uint64_t r_u64(struct rd *r)
{
	uint64_t hi = r_u32(r);
	return hi << 32 | r_u32(r);
}

char *r_str(struct rd *r)
{
	uint32_t n = r_u32(r);
	const unsigned char *p = take(r, n);
	if (!p || memchr(p, 0, n)) {
		r->bad = 1;
		return NULL;
	}
	char *s = xrealloc(NULL, (size_t)n + 1);
	memcpy(s, p, n);
	s[n] = 0;
	return s;
}

char **r_strlist(struct rd *r)
{
	uint32_t n = r_u32(r);
	/* every str needs at least 4 bytes: refuse counts the payload cannot hold */
	if (r->bad || n > (r->len - r->at) / 4) {
		r->bad = 1;
		return NULL;
	}
	char **v = xrealloc(NULL, ((size_t)n + 1) * sizeof *v);
	uint32_t i;
	for (i = 0; i < n; i++) {
		v[i] = r_str(r);
		if (!v[i])
			break;
	}
	v[i] = NULL;
	if (r->bad) {
		strv_free(v);
		return NULL;
	}
	return v;
}

int r_end(struct rd *r) { return r->bad || r->at != r->len ? -1 : 0; }

void strv_free(char **v)
{
	if (!v)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

void frame_put(struct buf *b, uint8_t type, uint32_t stream, const void *payload, size_t n)
{
	unsigned char h[HDR] = {0xA3, 0xB0};
	uint32_t len = (uint32_t)(5 + n);
	h[2] = len >> 24, h[3] = len >> 16, h[4] = len >> 8, h[5] = len;
	h[6] = type;
	h[7] = stream >> 24, h[8] = stream >> 16, h[9] = stream >> 8, h[10] = stream;
	buf_put(b, h, HDR);
	buf_put(b, payload, n);
}

static void vlog(const char *fmt, va_list ap)
{
	char line[1024];
	int n = snprintf(line, sizeof line, "a3s-init: ");
	int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	if (m < 0)
		m = 0;
	n += m;
	if (n > (int)sizeof line - 2)
		n = (int)sizeof line - 2;
	line[n++] = '\n';
	(void)!write(g_console, line, (size_t)n);
}

void logmsg(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog(fmt, ap);
	va_end(ap);
}

void dbg(const char *fmt, ...)
{
	if (!g_debug)
		return;
	va_list ap;
	va_start(ap, fmt);
	vlog(fmt, ap);
	va_end(ap);
}
