/* a3s-shim-loop: the steady state of a box's supervisor, once its VM has started.
 *
 * a3s_box/drivers/qemu/shim.py sets a box up in Python (cgroup, virtiofsd, the box's
 * network, the jailed QEMU) and then execs this program in the same process: QEMU,
 * virtiofsd and the network keeper stay its children, every descriptor it needs is
 * inherited, and its argv[0] keeps the title "a3s_box.drivers.qemu.shim RUNDIR" that
 * supervision.py recognises. What Python would cost per box for as long as the VM runs
 * (an interpreter's pages written by reference counting, about 4 MiB) is not paid: this
 * loop is a static binary of a few pages.
 *
 * It holds the guest's one virtio-serial connection and serves RUNDIR/guest.sock to any
 * number of host clients, routing frames between them (the rules below, "mux"); writes
 * the serial console to the box's capped, rotated, time-stamped log; stops the VM when a
 * helper the box's promises rest on dies; and, once QEMU has exited, stops the helpers,
 * removes the box's cgroups and writes RUNDIR/exit.json saying why.
 *
 * Threat model: the guest (its root may be hostile) writes the channel and the console.
 * Everything it sends is bounded (a frame's length is checked before it is buffered, a
 * malformed one ends the guest's open sessions and the stream resynchronises at the next
 * magic, as the guest itself does); a guest cannot make this loop allocate without bound,
 * address a session it was not given, or stop it serving. Clients are the box owner's own
 * processes (guest.sock is in the owner's 0700 box folder): a client that breaks the
 * protocol or stops reading (16 MiB behind) loses only its own connection. The egress
 * daemon (its own uid; it parses what guests send, so it may be subverted) asks over the
 * held registration for a socket of the box's network namespace connected to a published
 * port: only the exact request is answered, only for the box's own published ports, and
 * this process enters the namespace for the socket() call alone.
 *
 * Single-threaded (poll), no allocation on the guest's behalf beyond one frame.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC0 0xA3
#define MAGIC1 0xB0
#define HEADER_SIZE 11
#define MAX_PAYLOAD (1u << 20)
#define MAX_LENGTH (5u + MAX_PAYLOAD)
#define CLIENT_BUFFER_MAX (16u << 20) /* a client that reads nothing is dropped past this */
#define GUEST_BUFFER_HIGH (4u << 20)  /* stop reading clients while the guest is this far behind */
#define EXIT_JAIL_FAILED 126          /* a3s_box/jail/enter.py */
#define HELPER_GRACE_MS 5000
#define MAX_CLIENTS 1024
#define REGISTER_AGAIN_MAX 120.0   /* seconds a registration helper may take */
#define MAX_PUBLISHED 64           /* network/wire.py's */
#define CONNECT_WAIT_MS 2000       /* a published port's connection inside the box's namespace */

enum {
	HELLO = 0x01, PING = 0x02, PONG = 0x03, CONFIG = 0x04, SHUTDOWN = 0x05, MOUNT = 0x06,
	SEED = 0x07, PREPARE = 0x08, TRUST = 0x09, NET = 0x0A, RESULT = 0x0F, EXEC = 0x10, STDIN = 0x12, EXIT = 0x15, SIGNAL = 0x16,
	RESIZE = 0x17, PUT = 0x20, GET = 0x21, STATUS = 0x30, STATUS_REPLY = 0x31, ERROR = 0x7F,
};

/* --- small things ------------------------------------------------------------------ */

static const char *g_box = "?";

static void say(const char *fmt, ...)
{
	char line[4096];
	int n = snprintf(line, sizeof line, "shim %s: ", g_box);
	va_list ap;
	va_start(ap, fmt);
	if (n > 0 && n < (int)sizeof line)
		n += vsnprintf(line + n, sizeof line - n, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof line)
		n = sizeof line - 1;
	line[n++] = '\n';
	(void)!write(2, line, n);
}

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q) {
		say("out of memory");
		abort(); /* QEMU dies with us (PR_SET_PDEATHSIG): no unsupervised VM */
	}
	return q;
}

struct buf {
	unsigned char *p;
	size_t len, cap;
};

static void buf_put(struct buf *b, const void *d, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, d, n);
	b->len += n;
}

static void buf_drop(struct buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
		if (b->cap > (1u << 20)) { /* give a burst's memory back */
			free(b->p);
			b->p = NULL;
			b->cap = 0;
		}
		return;
	}
	memmove(b->p, b->p + n, b->len - n);
	b->len -= n;
}

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(unsigned char *p, uint32_t v)
{
	p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

static void frame_put(struct buf *b, int type, uint32_t stream, const void *payload, size_t n)
{
	unsigned char h[HEADER_SIZE] = {MAGIC0, MAGIC1};
	put_be32(h + 2, (uint32_t)(5 + n));
	h[6] = (unsigned char)type;
	put_be32(h + 7, stream);
	buf_put(b, h, sizeof h);
	buf_put(b, payload, n);
}

static void kill_frame(struct buf *b, uint32_t stream)
{
	unsigned char signo[4];
	put_be32(signo, SIGKILL);
	frame_put(b, SIGNAL, stream, signo, 4);
}

static const char *signame(int sig)
{
	static char other[16];
	static const char *names[] = {
		[SIGHUP] = "SIGHUP", [SIGINT] = "SIGINT", [SIGQUIT] = "SIGQUIT", [SIGILL] = "SIGILL",
		[SIGTRAP] = "SIGTRAP", [SIGABRT] = "SIGABRT", [SIGBUS] = "SIGBUS", [SIGFPE] = "SIGFPE",
		[SIGKILL] = "SIGKILL", [SIGUSR1] = "SIGUSR1", [SIGSEGV] = "SIGSEGV", [SIGUSR2] = "SIGUSR2",
		[SIGPIPE] = "SIGPIPE", [SIGALRM] = "SIGALRM", [SIGTERM] = "SIGTERM", [SIGSYS] = "SIGSYS",
		[SIGXCPU] = "SIGXCPU", [SIGXFSZ] = "SIGXFSZ",
	};
	if (sig > 0 && sig < (int)(sizeof names / sizeof *names) && names[sig])
		return names[sig];
	snprintf(other, sizeof other, "%d", sig);
	return other;
}

static double now_mono(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int pidfd_open(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* --- the frame reader: bytes in, whole frames out; resynchronises at the next magic --- */

struct reader {
	struct buf in;
	size_t off;           /* what was consumed of in: dropped once per read, not per frame */
	int errors;           /* malformed frames since the owner last looked */
	const char *first;    /* what the first of them was */
};

static void reader_error(struct reader *r, const char *what)
{
	if (!r->errors++)
		r->first = what;
}

/* Skips to the next magic after the start, keeping a trailing first half of one (the
 * next read may complete it). */
static void reader_resync(struct reader *r)
{
	const unsigned char *p = r->in.p + r->off;
	size_t len = r->in.len - r->off, at;
	for (at = 1; at + 1 < len; at++)
		if (p[at] == MAGIC0 && p[at + 1] == MAGIC1)
			break;
	if (at + 1 < len)
		r->off += at;
	else
		r->off += len - (len && p[len - 1] == MAGIC0 ? 1 : 0);
}

/* The next whole frame's header and payload (pointers into the buffer, valid until the
 * next read), consumed; 0 when none is complete. */
static int reader_next(struct reader *r, int *type, uint32_t *stream, const unsigned char **payload, size_t *n)
{
	for (;;) {
		const unsigned char *p = r->in.p + r->off;
		size_t len = r->in.len - r->off;
		if (len < HEADER_SIZE) {
			if (len && !(p[0] == MAGIC0 && (len < 2 || p[1] == MAGIC1))) {
				reader_error(r, "bad magic");
				reader_resync(r);
				continue;
			}
			return 0;
		}
		uint32_t length = be32(p + 2);
		if (p[0] != MAGIC0 || p[1] != MAGIC1 || length < 5 || length > MAX_LENGTH) {
			reader_error(r, p[0] == MAGIC0 && p[1] == MAGIC1 ? "bad frame header" : "bad magic");
			reader_resync(r);
			continue;
		}
		if (len < 6 + (size_t)length)
			return 0;
		*type = p[6];
		*stream = be32(p + 7);
		*payload = p + HEADER_SIZE;
		*n = length - 5;
		r->off += 6 + (size_t)length;
		return 1;
	}
}

/* --- the box's console log: capped, rotated, every line stamped with its start -------- */

struct log {
	const char *path;
	long long max_size;
	int max_files;
	int fd;
	long long size;
	long long dropped_bytes, dropped_writes;
	int at_line_start;  /* of what comes in (for stamps) */
	int mid_line;       /* the file does not end with a newline */
};

#define LINE_SLACK 4096 /* how far past the cap a file may go to end its last line */

static void log_open(struct log *l)
{
	struct stat st;
	l->fd = open(l->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	l->size = l->fd >= 0 && fstat(l->fd, &st) == 0 ? st.st_size : 0;
}

static void log_rotate(struct log *l)
{
	char from[4096], to[4096];
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
	if (l->max_files <= 1) {
		(void)!truncate(l->path, 0);
	} else {
		for (int i = l->max_files - 1; i > 0; i--) {
			if (i - 1 == 0)
				snprintf(from, sizeof from, "%s", l->path);
			else
				snprintf(from, sizeof from, "%s.%d", l->path, i - 1);
			snprintf(to, sizeof to, "%s.%d", l->path, i);
			rename(from, to); /* a missing one is fine */
		}
	}
	log_open(l);
	l->mid_line = 0;
}

static int log_put(struct log *l, const void *d, size_t n)
{
	if (l->fd < 0)
		return 0;
	ssize_t w = write(l->fd, d, n);
	if (w < 0)
		return 0;
	l->size += w;
	if (w > 0)
		l->mid_line = ((const unsigned char *)d)[w - 1] != '\n';
	return (size_t)w == n;
}

/* Never blocks the VM on a full disk: what cannot be written is dropped and counted, and
 * the next write that succeeds is preceded by a line saying how much was lost. */
static void log_write(struct log *l, const unsigned char *d, size_t n)
{
	if (!l->path || !n)
		return;
	if ((long long)n > l->max_size) {
		d += n - l->max_size;
		n = l->max_size;
	}
	if (l->size && l->size + (long long)n > l->max_size) {
		/* a file ends where a line does: the line under way is finished in it first (a
		 * line longer than LINE_SLACK is cut), so a reader across the rotation sees it whole */
		const unsigned char *nl = l->mid_line ? memchr(d, '\n', n < LINE_SLACK ? n : LINE_SLACK) : NULL;
		if (nl) {
			size_t head = (size_t)(nl - d) + 1;
			log_put(l, d, head);
			d += head, n -= head;
		}
		log_rotate(l);
		if (!n)
			return;
	}
	if (l->fd < 0)
		log_open(l);
	if (l->dropped_bytes) {
		char note[160];
		int k = snprintf(note, sizeof note,
				 "a3s-box: %lld bytes of log in %lld writes were dropped (the host could not write them)\n",
				 l->dropped_bytes, l->dropped_writes);
		if (!log_put(l, note, k)) {
			l->dropped_bytes += n, l->dropped_writes++;
			return;
		}
		l->dropped_bytes = l->dropped_writes = 0;
	}
	if (!log_put(l, d, n))
		l->dropped_bytes += n, l->dropped_writes++;
}

static void stamp(char out[64])
{
	struct timespec t;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &t);
	gmtime_r(&t.tv_sec, &tm);
	snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, t.tv_nsec / 1000);
}

/* Each line prefixed by the time it began (for `box logs --since` and `-t`). */
static void log_lines(struct log *l, const unsigned char *d, size_t n)
{
	struct buf out = {0};
	char ts[64];
	stamp(ts);
	for (size_t start = 0; start < n;) {
		const unsigned char *nl = memchr(d + start, '\n', n - start);
		size_t end = nl ? (size_t)(nl - d) + 1 : n;
		if (l->at_line_start)
			buf_put(&out, ts, strlen(ts));
		buf_put(&out, d + start, end - start);
		l->at_line_start = d[end - 1] == '\n';
		start = end;
	}
	log_write(l, out.p, out.len);
	free(out.p);
}

/* --- state -------------------------------------------------------------------------- */

struct conn {
	int fd;
	struct reader r;
	struct buf out;
	int using; /* it ran something or moved files (not just STATUS or PING) */
};

struct session {
	int cid;          /* client (its slot) */
	uint32_t stream;  /* the client's stream id */
	uint32_t gid;     /* the guest's */
};

struct helper {
	pid_t pid;
	int pidfd;
	int fd;            /* the network keeper's end of its socket pair, or -1 */
	const char *label; /* a volume's target, or NULL for the network keeper */
	int status, done;
};

static struct {
	const char *rundir, *channel_path, *guest_path;
	pid_t qemu;
	int qemu_pidfd, sigfd;
	int chan;            /* listening until QEMU connects */
	int console_listen, console;
	struct log console_log;
	struct conn guest;   /* fd -1 until QEMU connects */
	int hello_seen;
	struct buf hello;    /* the HELLO the guest said at boot, re-encoded for clients */
	int listener;        /* guest.sock, once the guest said HELLO */
	struct conn *clients[MAX_CLIENTS];
	struct session *sessions;
	size_t nsessions, sessions_cap;
	uint32_t next_gid;
	int *ctl_waiting;    /* who gets the next stream-0 reply (-1: a departed client) */
	size_t nwaiting, waiting_cap;
	struct helper helpers[64];
	int nhelpers;
	/* the box's registration held by descriptors (a3s_box/network/keeper.py): the
	 * connection to the egress daemon, and what registering the box again needs */
	struct {
		int sock;          /* -1 while a helper registers the box again */
		int fds[7];        /* message, netns, the four FIXED_FDS, userns (-1 if none) */
		const char *python, *home;
		pid_t helper;      /* registering the box again (0: none) */
		int answer;        /* its answer socket */
		double since;
		int failed;
		/* published ports: the inner port, and the host's listener (for registering again) */
		struct { unsigned port; int fd; } published[MAX_PUBLISHED];
		int npublished;
		int own_netns;     /* where this process makes its other sockets */
	} reg;
	char *cgroups[16];
	int ncgroups;
	char stopping[256];
	char keeper_said[900]; /* why the box's network ended, as its keeper said */
	char failure[1024];    /* a helper the box's promises rest on ended: which and why */
	double last_touch, broken_said;
	long broken;
} S;

/* --- the routing rules between the guest and its clients ("mux") -------------------- */

static void to_client(int cid, int type, uint32_t stream, const void *payload, size_t n);

static int is_opener(int t)
{
	return t == EXEC || t == PUT || t == GET || t == STATUS || t == PING;
}

static int is_terminal(int t)
{
	return t == EXIT || t == RESULT || t == STATUS_REPLY || t == PONG || t == ERROR;
}

static int is_use(int t)
{
	return t == EXEC || t == STDIN || t == PUT || t == GET || t == SIGNAL || t == RESIZE;
}

static struct session *by_gid(uint32_t gid)
{
	for (size_t i = 0; i < S.nsessions; i++)
		if (S.sessions[i].gid == gid)
			return &S.sessions[i];
	return NULL;
}

static struct session *by_client(int cid, uint32_t stream)
{
	for (size_t i = 0; i < S.nsessions; i++)
		if (S.sessions[i].cid == cid && S.sessions[i].stream == stream)
			return &S.sessions[i];
	return NULL;
}

static void forget(struct session *s)
{
	*s = S.sessions[--S.nsessions];
}

static uint32_t new_gid(void)
{
	for (;;) {
		uint32_t gid = S.next_gid;
		S.next_gid = S.next_gid == UINT32_MAX ? 1 : S.next_gid + 1;
		if (!by_gid(gid))
			return gid;
	}
}

static int by_key(const void *a, const void *b)
{
	const struct session *x = a, *y = b;
	if (x->cid != y->cid)
		return x->cid < y->cid ? -1 : 1;
	return x->stream < y->stream ? -1 : x->stream > y->stream;
}

static void from_client(int cid, int type, uint32_t stream, const unsigned char *payload, size_t n)
{
	if (stream == 0) {
		if (type == HELLO) { /* the guest said hello once, at boot */
			to_client(cid, HELLO, 0, S.hello.p, S.hello.len);
			return;
		}
		if (type == CONFIG || type == MOUNT || type == SEED || type == PREPARE || type == TRUST || type == NET ||
		    type == SHUTDOWN || type == PING) {
			if (S.nwaiting == S.waiting_cap) {
				S.waiting_cap = S.waiting_cap ? 2 * S.waiting_cap : 16;
				S.ctl_waiting = xrealloc(S.ctl_waiting, S.waiting_cap * sizeof *S.ctl_waiting);
			}
			S.ctl_waiting[S.nwaiting++] = cid;
		}
		frame_put(&S.guest.out, type, 0, payload, n);
		return;
	}
	struct session *s = by_client(cid, stream);
	if (!s) {
		if (!is_opener(type))
			return; /* a late STDIN/SIGNAL for a finished session: nothing to do */
		if (S.nsessions == S.sessions_cap) {
			S.sessions_cap = S.sessions_cap ? 2 * S.sessions_cap : 32;
			S.sessions = xrealloc(S.sessions, S.sessions_cap * sizeof *S.sessions);
		}
		s = &S.sessions[S.nsessions++];
		s->cid = cid, s->stream = stream, s->gid = new_gid();
	}
	frame_put(&S.guest.out, type, s->gid, payload, n);
}

static void from_guest(int type, uint32_t stream, const unsigned char *payload, size_t n)
{
	if (stream == 0) {
		if (type == RESULT || type == PONG || (type == ERROR && S.nwaiting)) {
			if (!S.nwaiting)
				return;
			int cid = S.ctl_waiting[0];
			memmove(S.ctl_waiting, S.ctl_waiting + 1, --S.nwaiting * sizeof *S.ctl_waiting);
			if (cid >= 0)
				to_client(cid, type, 0, payload, n);
		}
		return; /* e.g. a stray HELLO or a resync ERROR no client asked for */
	}
	struct session *s = by_gid(stream);
	if (!s)
		return;
	int cid = s->cid;
	uint32_t theirs = s->stream;
	if (is_terminal(type))
		forget(s);
	to_client(cid, type, theirs, payload, n);
}

/* By client, then stream: what a client started is told apart in its order. (qsort of
 * no sessions would be passed S.sessions still NULL: undefined, though harmless in musl.) */
static void sort_sessions(void)
{
	if (S.nsessions)
		qsort(S.sessions, S.nsessions, sizeof *S.sessions, by_key);
}

/* The client is gone: kill what it started (the guest only does so when the whole
 * channel closes), and forget its pending stream-0 requests. Returns how many. */
static int mux_drop_client(int cid)
{
	int killed = 0;
	sort_sessions();
	for (size_t i = 0; i < S.nsessions;) {
		if (S.sessions[i].cid == cid) {
			kill_frame(&S.guest.out, S.sessions[i].gid);
			memmove(&S.sessions[i], &S.sessions[i + 1], (S.nsessions - i - 1) * sizeof *S.sessions);
			S.nsessions--;
			killed++;
		} else {
			i++;
		}
	}
	for (size_t i = 0; i < S.nwaiting; i++)
		if (S.ctl_waiting[i] == cid)
			S.ctl_waiting[i] = -1;
	return killed;
}

/* The guest broke the protocol: every open session ends with an ERROR to its client
 * (what the guest said on them can no longer be trusted). */
static void mux_end_all(const char *why)
{
	struct buf payload = {0};
	unsigned char k[4];
	put_be32(k, 71); /* EPROTO */
	buf_put(&payload, k, 4);
	put_be32(k, (uint32_t)strlen(why));
	buf_put(&payload, k, 4);
	buf_put(&payload, why, strlen(why));
	sort_sessions();
	size_t n = S.nsessions;
	S.nsessions = 0; /* to_client may drop a client: nothing of these is left to kill twice */
	for (size_t i = 0; i < n; i++)
		to_client(S.sessions[i].cid, ERROR, S.sessions[i].stream, payload.p, payload.len);
	for (size_t i = 0; i < n; i++)
		kill_frame(&S.guest.out, S.sessions[i].gid);
	free(payload.p);
}

/* --- clients ------------------------------------------------------------------------ */

static void touch_activity(void)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/activity", S.rundir);
	if (utimensat(AT_FDCWD, path, NULL, 0) != 0 && errno == ENOENT) {
		int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (fd >= 0)
			close(fd);
	}
}

/* A client used the box (exec, files): RUNDIR/activity's time says when, for a leased
 * box's lifetime.idle_timeout. At most one touch a second. */
static void active(void)
{
	double now = now_mono();
	if (now - S.last_touch >= 1.0) {
		S.last_touch = now;
		touch_activity();
	}
}

static void drop_client(int cid, const char *why)
{
	struct conn *c = S.clients[cid];
	if (!c)
		return;
	S.clients[cid] = NULL;
	close(c->fd);
	free(c->r.in.p);
	free(c->out.p);
	free(c);
	if (S.hello_seen) {
		int n = mux_drop_client(cid);
		if (n)
			say("client %d %s: killed its %d session(s)", cid, why, n);
	}
}

static void to_client(int cid, int type, uint32_t stream, const void *payload, size_t n)
{
	struct conn *c = cid >= 0 && cid < MAX_CLIENTS ? S.clients[cid] : NULL;
	if (!c)
		return;
	frame_put(&c->out, type, stream, payload, n);
	if (c->out.len > CLIENT_BUFFER_MAX)
		drop_client(cid, "not reading its output");
}

static void accept_client(void)
{
	int fd = accept4(S.listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	int cid;
	for (cid = 0; cid < MAX_CLIENTS && S.clients[cid]; cid++)
		;
	if (cid == MAX_CLIENTS) {
		close(fd);
		say("%d clients already: one refused", MAX_CLIENTS);
		return;
	}
	struct conn *c = calloc(1, sizeof *c);
	if (!c) {
		close(fd);
		return;
	}
	c->fd = fd;
	S.clients[cid] = c;
}

static int flush(struct conn *c)
{
	while (c->out.len) {
		ssize_t w = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
		buf_drop(&c->out, w);
	}
	return 0;
}

/* 1 with what was read added to R, 0 if nothing was there, -1 on EOF or error. */
static int fill(int fd, struct reader *r)
{
	unsigned char chunk[65536];
	ssize_t n = recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
	if (n == 0)
		return -1;
	buf_drop(&r->in, r->off); /* what the last read's frames were */
	r->off = 0;
	buf_put(&r->in, chunk, n);
	return 1;
}

static void client_io(int cid, short revents)
{
	struct conn *c = S.clients[cid];
	if ((revents & POLLOUT) && flush(c) < 0) {
		drop_client(cid, "write failed");
		return;
	}
	if (!(revents & (POLLIN | POLLHUP | POLLERR)))
		return;
	int got = fill(c->fd, &c->r);
	if (got < 0) {
		drop_client(cid, "disconnected");
		return;
	}
	int type;
	uint32_t stream;
	const unsigned char *payload;
	size_t n;
	while (reader_next(&c->r, &type, &stream, &payload, &n)) {
		if (c->r.errors)
			break;
		if (is_use(type)) {
			c->using = 1; /* an exec or a transfer: active for as long as it is connected */
			active();
		}
		from_client(cid, type, stream, payload, n);
		if (S.clients[cid] != c)
			return; /* dropped on the way (it stopped reading its answers) */
	}
	if (S.clients[cid] == c && c->r.errors) {
		char why[96];
		snprintf(why, sizeof why, "protocol error: %s", c->r.first);
		drop_client(cid, why);
	}
}

/* --- the guest ---------------------------------------------------------------------- */

static void listen_clients(void)
{
	/* bound under a temporary name and renamed: guest.sock appears only when ready */
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	char tmp[4096];
	const char *slash = strrchr(S.guest_path, '/');
	size_t dir = slash ? (size_t)(slash - S.guest_path) + 1 : 0;
	snprintf(tmp, sizeof tmp, "%.*s.%s.tmp", (int)dir, S.guest_path, S.guest_path + dir);
	unlink(tmp);
	if (strlen(tmp) >= sizeof a.sun_path) {
		say("guest socket path too long: %s", tmp);
		return;
	}
	strcpy(a.sun_path, tmp);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 64) != 0 ||
	    rename(tmp, S.guest_path) != 0) {
		say("cannot serve %s: %s", S.guest_path, strerror(errno));
		if (s >= 0)
			close(s);
		return;
	}
	S.listener = s;
	say("guest answered HELLO: serving %s", S.guest_path);
}

static void guest_gone(const char *why)
{
	say("guest channel %s; waiting for qemu to exit", why);
	if (S.guest.fd >= 0)
		close(S.guest.fd);
	S.guest.fd = -1;
	for (int cid = 0; cid < MAX_CLIENTS; cid++)
		if (S.clients[cid])
			drop_client(cid, "guest channel closed");
	unlink(S.guest_path);
}

/* A guest (its root may be hostile) sent frames that are not the protocol: its open
 * sessions end with an error to their clients, `box logs` says so (at most once a
 * second), and the stream carries on from the next good frame. */
static void guest_broke(int errors, const char *first)
{
	char why[128], line[256];
	S.broken += errors;
	if (S.hello_seen) {
		snprintf(why, sizeof why, "the guest broke the protocol (%s)", first);
		mux_end_all(why);
	}
	double now = now_mono();
	if (now - S.broken_said < 1.0)
		return;
	S.broken_said = now;
	int n = snprintf(line, sizeof line,
			 "a3s-box: the guest sent %ld malformed frame(s) (%s); its sessions were ended\n",
			 S.broken, first);
	say("%.*s", n - 1, line);
	if (!S.console_log.at_line_start)
		log_lines(&S.console_log, (const unsigned char *)"\n", 1);
	log_lines(&S.console_log, (const unsigned char *)line, n);
	S.broken = 0;
}

static void guest_io(short revents)
{
	if ((revents & POLLOUT) && flush(&S.guest) < 0) {
		guest_gone("write failed");
		return;
	}
	if (!(revents & (POLLIN | POLLHUP | POLLERR)))
		return;
	int got = fill(S.guest.fd, &S.guest.r);
	if (got < 0) {
		guest_gone("closed");
		return;
	}
	int type;
	uint32_t stream;
	const unsigned char *payload;
	size_t n;
	while (reader_next(&S.guest.r, &type, &stream, &payload, &n)) {
		if (!S.hello_seen) {
			if (type == HELLO && stream == 0) {
				buf_put(&S.hello, payload, n);
				S.hello_seen = 1;
				listen_clients();
			}
		} else {
			from_guest(type, stream, payload, n);
		}
	}
	if (S.guest.r.errors) {
		int errors = S.guest.r.errors;
		S.guest.r.errors = 0; /* resynchronised; the guest's stream carries on */
		guest_broke(errors, S.guest.r.first);
	}
}

static void hello_to_guest(void)
{
	unsigned char version[2] = {0, 1};
	frame_put(&S.guest.out, HELLO, 0, version, 2);
}

/* --- helpers, signals, the end -------------------------------------------------------- */

static void status_text(int status, char *out, size_t n)
{
	if (WIFSIGNALED(status))
		snprintf(out, n, "killed by %s", signame(WTERMSIG(status)));
	else
		snprintf(out, n, "status %d", WEXITSTATUS(status));
}

/* A helper the box rests on ended while the VM runs: why ("" while none has). */
static const char *dead_helper(void)
{
	static char why[1024];
	if (S.reg.failed) {
		snprintf(why, sizeof why, "the egress proxy is gone (%s)", S.keeper_said);
		return why;
	}
	for (int i = 0; i < S.nhelpers; i++) {
		struct helper *h = &S.helpers[i];
		if (!h->done)
			continue;
		if (!h->label) {
			/* the keeper said why before it ended (its registration is over) */
			snprintf(why, sizeof why, "the egress proxy is gone (%s)",
				 S.keeper_said[0] ? S.keeper_said : "its registration ended");
		} else {
			char st[48];
			status_text(h->status, st, sizeof st);
			snprintf(why, sizeof why, "virtiofsd of volume %s ended (%s)", h->label, st);
		}
		return why;
	}
	return "";
}

static void reap_helper(struct helper *h)
{
	if (h->done)
		return;
	if (waitpid(h->pid, &h->status, WNOHANG) == h->pid)
		h->done = 1;
}

/* The network keeper's socket: a line saying why the box's network ended, or EOF. */
static void keeper_io(struct helper *h)
{
	char why[900];
	ssize_t n = recv(h->fd, why, sizeof why - 1, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0) {
		why[n] = 0;
		why[strcspn(why, "\n")] = 0;
		snprintf(S.keeper_said, sizeof S.keeper_said, "%s", why);
	}
	close(h->fd);
	h->fd = -1;
	h->done = 1; /* its network is over, whether or not the process has ended yet */
}

static void stop_helpers(void)
{
	for (int i = 0; i < S.nhelpers; i++) {
		struct helper *h = &S.helpers[i];
		if (h->label) {
			kill(h->pid, SIGTERM);
		} else if (h->fd >= 0) { /* the keeper ends the box's network when this closes */
			close(h->fd);
			h->fd = -1;
		}
	}
	double deadline = now_mono() + HELPER_GRACE_MS / 1000.0;
	for (int i = 0; i < S.nhelpers; i++) {
		struct helper *h = &S.helpers[i];
		while (waitpid(h->pid, &h->status, WNOHANG) == 0) {
			if (now_mono() >= deadline) {
				kill(h->pid, SIGKILL);
				waitpid(h->pid, &h->status, 0);
				break;
			}
			struct pollfd p = {.fd = h->pidfd, .events = POLLIN};
			poll(&p, 1, 50);
		}
	}
}

static void json_string(struct buf *b, const char *s)
{
	buf_put(b, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\', esc[1] = c;
			buf_put(b, esc, 2);
		} else if (c < 0x20) {
			snprintf(esc, sizeof esc, "\\u%04x", c);
			buf_put(b, esc, 6);
		} else {
			buf_put(b, s, 1);
		}
	}
	buf_put(b, "\"", 1);
}

/* RUNDIR/exit.json, written to a temporary name and renamed: never seen half-written. */
static void write_exit(const char *status, int sig, const char *reason)
{
	struct buf b = {0};
	char path[4096], tmp[4096], num[32];
	buf_put(&b, "{\"reason\": ", 11);
	json_string(&b, reason);
	snprintf(num, sizeof num, ", \"signal\": %d, ", sig);
	buf_put(&b, num, strlen(num));
	buf_put(&b, "\"status\": ", 10);
	buf_put(&b, status, strlen(status));
	buf_put(&b, "}\n", 2);
	snprintf(path, sizeof path, "%s/exit.json", S.rundir);
	snprintf(tmp, sizeof tmp, "%s/.exit.json.%d", S.rundir, (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, b.p, b.len) != (ssize_t)b.len || fsync(fd) != 0 || close(fd) != 0 ||
	    rename(tmp, path) != 0) {
		say("cannot write %s: %s", path, strerror(errno));
		unlink(tmp);
	}
	free(b.p);
}


/* --- the registration held by descriptors ------------------------------------------------ */

/* `PYTHON -m a3s_box.network.keeper HOME RUNDIR [userns]` with keeper.py's RESUME_FDS from
 * descriptor 3 (its answer socket first), everything else of ours closed. */
static void register_again(void)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
		snprintf(S.keeper_said, sizeof S.keeper_said, "cannot register the box again: %s", strerror(errno));
		S.reg.failed = 1;
		return;
	}
	int have_userns = S.reg.fds[6] >= 0;
	pid_t pid = fork();
	if (pid == 0) {
		/* keeper.py's RESUME_FDS (userns only if there is one), then the published ports'
		 * listeners, in order */
		int src[8 + MAX_PUBLISHED] = {sv[1], S.reg.fds[0], S.reg.fds[1], S.reg.fds[2], S.reg.fds[3],
					       S.reg.fds[4], S.reg.fds[5], S.reg.fds[6]};
		int n = have_userns ? 8 : 7, tmp[8 + MAX_PUBLISHED];
		for (int i = 0; i < S.reg.npublished; i++)
			src[n++] = S.reg.published[i].fd;
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (int i = 0; i < n; i++) /* above every target number, then into place */
			if ((tmp[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 256)) < 0)
				_exit(127);
		for (int i = 0; i < n; i++)
			if (dup2(tmp[i], 3 + i) < 0)
				_exit(127);
		int null = open("/dev/null", O_RDONLY);
		if (null < 0 || dup2(null, 0) < 0 || dup2(2, 1) < 0)
			_exit(127);
		if (syscall(SYS_close_range, 3 + n, ~0U, 0) != 0)
			for (int fd = 3 + n; fd < 4096; fd++)
				close(fd);
		char *argv[] = {(char *)S.reg.python, "-m", "a3s_box.network.keeper", (char *)S.reg.home,
				(char *)S.rundir, have_userns ? "userns" : NULL, NULL};
		execv(S.reg.python, argv);
		_exit(127);
	}
	close(sv[1]);
	if (pid < 0) {
		close(sv[0]);
		snprintf(S.keeper_said, sizeof S.keeper_said, "cannot register the box again: %s", strerror(errno));
		S.reg.failed = 1;
		return;
	}
	S.reg.helper = pid;
	S.reg.answer = sv[0];
	S.reg.since = now_mono();
}

/* --- published ports: sockets of the box's namespace, for the daemon ------------------ */

/* The daemon's request, as network/wire.py's encode() writes it (sorted keys, no spaces):
 * {"id":N,"op":"connect","port":P}. The daemon parses what guests send, so what it says
 * to this root process is matched whole, or not answered (the daemon times it out). */
static int parse_connect(const char *m, size_t n, unsigned long long *id, unsigned *port)
{
	char text[160], ids[21], ports[6];
	int end = -1;
	if (n == 0 || n >= sizeof text || memchr(m, 0, n))
		return -1;
	memcpy(text, m, n);
	text[n] = 0;
	if (sscanf(text, "{\"id\":%20[0-9],\"op\":\"connect\",\"port\":%5[0-9]}%n", ids, ports, &end) != 2 ||
	    end != (int)n)
		return -1;
	errno = 0;
	unsigned long long i = strtoull(ids, NULL, 10);
	unsigned long p = strtoul(ports, NULL, 10);
	if (errno || i > (1ULL << 53) || p == 0 || p > 65535)
		return -1;
	*id = i, *port = (unsigned)p;
	return 0;
}

static void send_connected(unsigned long long id, int fd, const char *error)
{
	char text[700];
	int n = error ? snprintf(text, sizeof text, "{\"error\":\"%s\",\"id\":%llu,\"op\":\"connected\"}", error, id)
		      : snprintf(text, sizeof text, "{\"id\":%llu,\"op\":\"connected\"}", id);
	union {
		struct cmsghdr h;
		char space[CMSG_SPACE(sizeof(int))];
	} control;
	struct iovec iov = {.iov_base = text, .iov_len = (size_t)n < sizeof text ? (size_t)n : sizeof text - 1};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
	if (fd >= 0) {
		memset(&control, 0, sizeof control);
		m.msg_control = &control;
		m.msg_controllen = sizeof control;
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET, c->cmsg_type = SCM_RIGHTS, c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof fd);
	}
	if (sendmsg(S.reg.sock, &m, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		say("egress daemon: cannot answer its request %llu: %s", id, strerror(errno));
}

/* A TCP socket of the box's network namespace: this process steps in for the socket()
 * call alone (root may; the namespace's sockets stay in it wherever they are used). */
static int box_socket(void)
{
	if (S.reg.own_netns < 0 || setns(S.reg.fds[1], CLONE_NEWNET) != 0)
		return -1;
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int e = errno;
	if (setns(S.reg.own_netns, CLONE_NEWNET) != 0 && !S.failure[0]) {
		snprintf(S.failure, sizeof S.failure, "the shim could not leave the box's network namespace (%s)",
			 strerror(errno));
		say("%s: stopping the VM", S.failure);
		kill(S.qemu, SIGTERM);
	}
	errno = e;
	return s;
}

/* A socket of the box's namespace connected to one of its own published ports. */
static void answer_connect(unsigned long long id, unsigned port)
{
	char why[300];
	int known = 0;
	for (int i = 0; i < S.reg.npublished; i++)
		known |= S.reg.published[i].port == port;
	if (!known) {
		snprintf(why, sizeof why, "port %u is not published", port);
		send_connected(id, -1, why);
		return;
	}
	int s = box_socket();
	if (s < 0) {
		snprintf(why, sizeof why, "a socket of the box's namespace: %s", strerror(errno));
		send_connected(id, -1, why);
		return;
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int rc = connect(s, (struct sockaddr *)&a, sizeof a);
	if (rc != 0 && errno == EINPROGRESS) { /* loopback answers at once but for a full backlog */
		struct pollfd p = {.fd = s, .events = POLLOUT};
		int e = ETIMEDOUT;
		socklen_t len = sizeof e;
		if (poll(&p, 1, CONNECT_WAIT_MS) == 1 && getsockopt(s, SOL_SOCKET, SO_ERROR, &e, &len) != 0)
			e = errno;
		rc = e ? -1 : 0;
		errno = e;
	}
	if (rc != 0) {
		snprintf(why, sizeof why, "127.0.0.1:%u: %s", port, strerror(errno));
		send_connected(id, -1, why);
	} else {
		send_connected(id, s, NULL);
	}
	close(s);
}

/* The connection to the daemon is readable: a request for a published port's socket,
 * or its end (killed, crashed): the box is registered again. */
static void registration_io(void)
{
	char msg[4096];
	ssize_t n = recv(S.reg.sock, msg, sizeof msg, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0) {
		unsigned long long id;
		unsigned port;
		if (parse_connect(msg, (size_t)n, &id, &port) == 0)
			answer_connect(id, port);
		return;
	}
	close(S.reg.sock);
	S.reg.sock = -1;
	say("egress daemon: its connection ended; registering the box again");
	register_again();
}

static void helper_done(void)
{
	close(S.reg.answer);
	S.reg.answer = -1;
	if (S.reg.helper > 0)
		waitpid(S.reg.helper, NULL, 0);
	S.reg.helper = 0;
}

/* The helper's answer: b"ok" with the new connection, or b"error: WHY". */
static void answer_io(void)
{
	char text[1024];
	union {
		struct cmsghdr h;
		char space[CMSG_SPACE(sizeof(int))];
	} control;
	struct iovec iov = {.iov_base = text, .iov_len = sizeof text - 1};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof control};
	ssize_t n = recvmsg(S.reg.answer, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	int fd = -1;
	struct cmsghdr *c = n >= 0 ? CMSG_FIRSTHDR(&m) : NULL;
	if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)))
		memcpy(&fd, CMSG_DATA(c), sizeof fd);
	text[n > 0 ? n : 0] = 0;
	helper_done();
	if (n == 2 && memcmp(text, "ok", 2) == 0 && fd >= 0) {
		S.reg.sock = fd;
		return;
	}
	if (fd >= 0)
		close(fd);
	snprintf(S.keeper_said, sizeof S.keeper_said, "%.800s",
		 n <= 0 ? "the box could not be registered again (its helper ended without an answer; see shim.log)"
			: strncmp(text, "error: ", 7) == 0 ? text + 7 : text);
	S.reg.failed = 1;
}

static void registration_timeout(void)
{
	if (S.reg.helper > 0 && now_mono() - S.reg.since > REGISTER_AGAIN_MAX) {
		kill(S.reg.helper, SIGKILL);
		helper_done();
		snprintf(S.keeper_said, sizeof S.keeper_said,
			 "the box could not be registered again within %.0f s", REGISTER_AGAIN_MAX);
		S.reg.failed = 1;
	}
}

static void end_registration(void)
{
	if (S.reg.sock >= 0) /* the daemon ends the box's network */
		close(S.reg.sock);
	S.reg.sock = -1;
	if (S.reg.helper > 0) {
		kill(S.reg.helper, SIGKILL);
		helper_done();
	}
}

static void finish(int status)
{
	char reason[2048], st[32];
	int sig = 0;
	stop_helpers();
	end_registration();
	for (int i = 0; i < S.ncgroups; i++)
		rmdir(S.cgroups[i]); /* a process is left: the next create of this box reuses it */
	snprintf(st, sizeof st, "null");
	if (S.failure[0]) {
		snprintf(reason, sizeof reason, "%s; the VM was stopped", S.failure);
	} else if (WIFSIGNALED(status)) {
		sig = WTERMSIG(status);
		snprintf(reason, sizeof reason, "qemu was killed by %s", signame(sig));
	} else if (WEXITSTATUS(status) == 0) {
		snprintf(st, sizeof st, "0");
		snprintf(reason, sizeof reason, S.stopping[0] ? "stopped (%s)" : "the guest powered off", S.stopping);
	} else {
		snprintf(st, sizeof st, "%d", WEXITSTATUS(status));
		if (WEXITSTATUS(status) == EXIT_JAIL_FAILED)
			snprintf(reason, sizeof reason,
				 "the VMM could not be confined (see shim.log); nothing of the box ran");
		else
			snprintf(reason, sizeof reason, "qemu exited with status %d (see shim.log and console.log)",
				 WEXITSTATUS(status));
	}
	if (!S.failure[0] && S.stopping[0] && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
		size_t k = strlen(reason);
		snprintf(reason + k, sizeof reason - k, " while stopping (%s)", S.stopping);
	}
	say("%s", reason);
	/* what QEMU wrote before it exited (a panic's last lines) still goes to the log */
	for (int i = 0; S.console >= 0 && i < 256; i++) {
		unsigned char chunk[65536];
		ssize_t n = recv(S.console, chunk, sizeof chunk, MSG_DONTWAIT);
		if (n <= 0)
			break;
		log_lines(&S.console_log, chunk, n);
	}
	if (S.console_log.fd >= 0)
		close(S.console_log.fd);
	unlink(S.guest_path);
	unlink(S.channel_path);
	write_exit(st, sig, reason);
}

/* --- arguments ------------------------------------------------------------------------ */

static const char *opt(const char *arg, const char *name)
{
	size_t n = strlen(name);
	return strncmp(arg, name, n) == 0 && arg[n] == '=' ? arg + n + 1 : NULL;
}

static long number(const char *s, const char *what)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || end == s) {
		say("bad %s: %s", what, s);
		exit(2);
	}
	return v;
}

static void add_helper(const char *v, int keeper)
{
	/* PID:FD for the network keeper, PID:TARGET for a volume's virtiofsd */
	if (S.nhelpers == (int)(sizeof S.helpers / sizeof *S.helpers)) {
		say("too many helpers");
		exit(2);
	}
	const char *colon = strchr(v, ':');
	if (!colon) {
		say("bad helper: %s", v);
		exit(2);
	}
	char pid[32];
	snprintf(pid, sizeof pid, "%.*s", (int)(colon - v), v);
	struct helper *h = &S.helpers[S.nhelpers++];
	h->pid = (pid_t)number(pid, "helper pid");
	h->fd = keeper ? (int)number(colon + 1, "keeper fd") : -1;
	h->label = keeper ? NULL : colon + 1;
	h->pidfd = pidfd_open(h->pid);
	if (h->pidfd < 0) /* already reaped by nobody: gone before we looked */
		h->done = 1, h->status = 0;
}

static void held(const char *v)
{
	/* SOCK,MESSAGE,NETNS,TCP,UDP,FOLDER,ACTIVITY[,USERNS] (keeper.py Held.fds()) */
	char copy[256], *save = NULL;
	int got[8], n = 0;
	snprintf(copy, sizeof copy, "%s", v);
	for (char *t = strtok_r(copy, ",", &save); t && n < 8; t = strtok_r(NULL, ",", &save))
		got[n++] = (int)number(t, "registration fd");
	if (n != 7 && n != 8) {
		say("bad --registration: %s", v);
		exit(2);
	}
	S.reg.sock = got[0];
	for (int i = 0; i < 7; i++)
		S.reg.fds[i] = i + 1 < n ? got[i + 1] : -1;
}

static void add_published(const char *v)
{
	/* PORT:FD (shim_loop.py LoopArgs.published) */
	const char *colon = strchr(v, ':');
	char port[16];
	if (!colon || colon - v >= (long)sizeof port || S.reg.npublished == MAX_PUBLISHED) {
		say("bad --published: %s", v);
		exit(2);
	}
	memcpy(port, v, (size_t)(colon - v));
	port[colon - v] = 0;
	long p = number(port, "published port");
	if (p < 1 || p > 65535) {
		say("bad --published: %s", v);
		exit(2);
	}
	S.reg.published[S.reg.npublished].port = (unsigned)p;
	S.reg.published[S.reg.npublished++].fd = (int)number(colon + 1, "published listener fd");
}

static void parse(int argc, char **argv)
{
	S.chan = S.console_listen = S.console = S.listener = S.guest.fd = -1;
	S.reg.sock = S.reg.answer = S.reg.own_netns = -1;
	S.console_log.fd = -1;
	S.console_log.at_line_start = 1;
	S.console_log.max_size = 10 << 20;
	S.console_log.max_files = 5;
	S.next_gid = 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v;
		if ((v = opt(a, "--rundir"))) S.rundir = v;
		else if ((v = opt(a, "--box"))) g_box = v;
		else if ((v = opt(a, "--qemu"))) S.qemu = (pid_t)number(v, "qemu pid");
		else if ((v = opt(a, "--channel"))) S.chan = (int)number(v, "channel fd");
		else if ((v = opt(a, "--channel-path"))) S.channel_path = v;
		else if ((v = opt(a, "--guest-path"))) S.guest_path = v;
		else if ((v = opt(a, "--console"))) S.console_listen = (int)number(v, "console fd");
		else if ((v = opt(a, "--console-log"))) S.console_log.path = v;
		else if ((v = opt(a, "--log-max-size"))) S.console_log.max_size = number(v, "log size");
		else if ((v = opt(a, "--log-max-files"))) S.console_log.max_files = (int)number(v, "log files");
		else if ((v = opt(a, "--cgroup"))) {
			if (S.ncgroups < (int)(sizeof S.cgroups / sizeof *S.cgroups))
				S.cgroups[S.ncgroups++] = (char *)v;
		} else if ((v = opt(a, "--volume"))) add_helper(v, 0);
		else if ((v = opt(a, "--network"))) add_helper(v, 1);
		else if ((v = opt(a, "--registration"))) held(v);
		else if ((v = opt(a, "--published"))) add_published(v);
		else if ((v = opt(a, "--python"))) S.reg.python = v;
		else if ((v = opt(a, "--home"))) S.reg.home = v;
		else if ((v = opt(a, "--stopping"))) snprintf(S.stopping, sizeof S.stopping, "%s", v);
		else {
			say("unknown argument %s", a);
			exit(2);
		}
	}
	if (!S.rundir || !S.qemu || S.chan < 0 || !S.channel_path || !S.guest_path ||
	    (S.reg.sock >= 0 && (!S.reg.python || !S.reg.home))) {
		say("usage: a3s-shim-loop --rundir=R --box=ID --qemu=PID --channel=FD --channel-path=P --guest-path=P ...");
		exit(2);
	}
	if (S.console_log.max_size < 1)
		S.console_log.max_size = 1;
	if (S.reg.npublished && (S.reg.own_netns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0)
		say("cannot open this process's network namespace: %s", strerror(errno));
}

/* --- the loop --------------------------------------------------------------------------- */

enum { P_QEMU, P_SIG, P_CHAN, P_CONSOLE_LISTEN, P_CONSOLE, P_GUEST, P_LISTENER, P_REG, P_ANSWER, P_FIXED };

int pid1_parent(pid_t vmm); /* pid1_parent.c */

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--pid1-parent") == 0)
		return pid1_parent((pid_t)number(argv[2], "pid"));
	parse(argc, argv);
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL); /* shim.py blocked them before exec: none is lost */
	signal(SIGPIPE, SIG_IGN);
	S.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	S.qemu_pidfd = pidfd_open(S.qemu);
	if (S.sigfd < 0 || S.qemu_pidfd < 0) {
		say("cannot watch qemu pid %d: %s", (int)S.qemu, strerror(errno));
		kill(S.qemu, SIGKILL);
	}
	if (S.console_log.path)
		log_open(&S.console_log);
	if (S.stopping[0])
		kill(S.qemu, SIGTERM); /* asked to stop while QEMU was being started */

	static struct pollfd fds[P_FIXED + MAX_CLIENTS + 64];
	static int owner[P_FIXED + MAX_CLIENTS + 64]; /* client slot, or -1 - helper index */
	int status = 0;
	for (;;) {
		if (waitpid(S.qemu, &status, WNOHANG) == S.qemu)
			break;
		int guest_full = S.guest.fd >= 0 && S.guest.out.len > GUEST_BUFFER_HIGH;
		struct { int fd; short ev; } fixed[P_FIXED] = {
			[P_QEMU] = {S.qemu_pidfd, POLLIN},
			[P_SIG] = {S.sigfd, POLLIN},
			[P_CHAN] = {S.chan, POLLIN},
			[P_CONSOLE_LISTEN] = {S.console_listen, POLLIN},
			[P_CONSOLE] = {S.console, POLLIN},
			[P_GUEST] = {S.guest.fd, POLLIN | (S.guest.out.len ? POLLOUT : 0)},
			[P_LISTENER] = {S.listener, POLLIN},
			[P_REG] = {S.reg.sock, POLLIN},
			[P_ANSWER] = {S.reg.answer, POLLIN},
		};
		int n = 0;
		for (int i = 0; i < P_FIXED; i++) {
			fds[n] = (struct pollfd){.fd = fixed[i].fd, .events = fixed[i].ev};
			owner[n++] = 0;
		}
		for (int cid = 0; cid < MAX_CLIENTS; cid++) {
			struct conn *c = S.clients[cid];
			if (!c)
				continue;
			/* backpressure: while the guest lags, client input stays unread in its socket */
			short ev = (guest_full ? 0 : POLLIN) | (c->out.len ? POLLOUT : 0);
			fds[n] = (struct pollfd){.fd = ev ? c->fd : -1, .events = ev};
			owner[n++] = cid;
		}
		for (int i = 0; i < S.nhelpers; i++) {
			struct helper *h = &S.helpers[i];
			fds[n] = (struct pollfd){.fd = h->done ? -1 : (h->fd >= 0 ? h->fd : h->pidfd), .events = POLLIN};
			owner[n++] = -1 - i;
		}
		int ready = poll(fds, n, 500);
		if (ready < 0 && errno != EINTR) {
			say("poll: %s", strerror(errno));
			kill(S.qemu, SIGKILL); /* a supervisor that cannot watch must not leave a VM */
			waitpid(S.qemu, &status, 0);
			break;
		}
		if (ready > 0) {
			if (fds[P_SIG].revents) {
				struct signalfd_siginfo si;
				while (read(S.sigfd, &si, sizeof si) == sizeof si)
					snprintf(S.stopping, sizeof S.stopping, "%s to the shim", signame(si.ssi_signo));
				kill(S.qemu, SIGTERM); /* QEMU exits cleanly on SIGTERM; the loop sees it */
			}
			if (fds[P_CHAN].revents) {
				int g = accept4(S.chan, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
				if (g >= 0) {
					close(S.chan); /* QEMU connects exactly once */
					S.chan = -1;
					S.guest.fd = g;
					hello_to_guest();
				}
			}
			if (fds[P_CONSOLE_LISTEN].revents) {
				int c = accept4(S.console_listen, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
				if (c >= 0) {
					close(S.console_listen);
					S.console_listen = -1;
					S.console = c;
				}
			}
			if (fds[P_CONSOLE].revents) {
				unsigned char chunk[65536];
				ssize_t k = recv(S.console, chunk, sizeof chunk, MSG_DONTWAIT);
				if (k > 0) {
					log_lines(&S.console_log, chunk, k);
				} else if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
					close(S.console);
					S.console = -1;
				}
			}
			if (fds[P_GUEST].revents && S.guest.fd >= 0)
				guest_io(fds[P_GUEST].revents);
			if (fds[P_LISTENER].revents)
				accept_client();
			if (fds[P_REG].revents && S.reg.sock >= 0)
				registration_io();
			if (fds[P_ANSWER].revents && S.reg.answer >= 0)
				answer_io();
			for (int i = P_FIXED; i < n; i++) {
				if (!fds[i].revents)
					continue;
				if (owner[i] >= 0) {
					if (S.clients[owner[i]] && S.clients[owner[i]]->fd == fds[i].fd)
						client_io(owner[i], fds[i].revents);
				} else {
					struct helper *h = &S.helpers[-1 - owner[i]];
					if (h->fd >= 0)
						keeper_io(h);
					else
						reap_helper(h);
				}
			}
		}
		registration_timeout();
		for (int cid = 0; cid < MAX_CLIENTS; cid++)
			if (S.clients[cid] && S.clients[cid]->using) {
				active(); /* a long exec with no output is still use */
				break;
			}
		if (!S.failure[0] && dead_helper()[0]) {
			/* no proxy: no network policy, no secrets; no virtiofsd: no volume. The box
			 * stops rather than run without what it was promised; the reconcile loop (or
			 * the next apply) boots it again with fresh helpers. */
			snprintf(S.failure, sizeof S.failure, "%s", dead_helper());
			say("%s: stopping the VM", S.failure);
			kill(S.qemu, SIGTERM);
		}
		if (ready == 0 && !S.hello_seen && S.guest.fd >= 0)
			hello_to_guest(); /* until the guest answers, repeat HELLO (extra answers are ignored) */
	}
	finish(status);
	return 0;
}
