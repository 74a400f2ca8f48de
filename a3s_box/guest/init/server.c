/* The protocol server: one poll loop over the host channel(s), session pipes, the
 * nsexec socket and a signalfd for SIGCHLD. Single-threaded on purpose: PID 1 must
 * never block on one peer, so every fd is non-blocking and every peer has a buffer. */
#include "server.h"

const struct server_opts *O;
struct conn *conns[64];
int nconns;
struct sess **sess;
int nsess, capsess;
int sigfd = -1, nsx_listen = -1;
long long t0;
int stopping;

long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

void flush_conn(struct conn *c)
{
	while (c->ob.len && !c->dead) {
		ssize_t n = write(c->out, c->ob.p, c->ob.len);
		if (n > 0) {
			buf_drop(&c->ob, (size_t)n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		c->dead = 1; /* EPIPE and friends: the reader is gone */
	}
}

void send_frame(struct conn *c, uint8_t type, uint32_t stream, const void *p, size_t n)
{
	if (!c || c->dead)
		return;
	frame_put(&c->ob, type, stream, p, n);
	flush_conn(c);
}

void send_errno_msg(struct conn *c, uint8_t type, uint32_t stream, int err, const char *msg)
{
	struct buf b = {0};
	w_u32(&b, (uint32_t)err);
	w_cstr(&b, msg);
	send_frame(c, type, stream, b.p, b.len);
	buf_free(&b);
}

void exit_payload(struct buf *b, int kind, int value, const char *msg)
{
	w_u8(b, (uint8_t)kind);
	w_u32(b, (uint32_t)value);
	w_cstr(b, msg);
}

void on_hello(struct conn *c, uint32_t id, struct rd *r)
{
	r_u16(r);
	if (r_end(r) < 0 || id) {
		send_error(c, id, EPROTO, "bad HELLO");
		return;
	}
	struct utsname u;
	uname(&u);
	char info[600];
	snprintf(info, sizeof info, "kernel=%s\nhostname=%s\ntransport=%s\n", u.release,
		 u.nodename, O->transport);
	struct buf b = {0};
	w_u16(&b, PROTO_VERSION);
	w_cstr(&b, info);
	send_frame(c, M_HELLO, 0, b.p, b.len);
	buf_free(&b);
}



/* One whole frame from the host. A bad one is dropped; never fatal. */
void dispatch(struct conn *c, int type, uint32_t id, const unsigned char *p, size_t n)
{
	struct rd r = {.p = p, .len = n};
	struct sess *s = id ? sess_find(c, id) : NULL;
	int fresh = id && !s; /* session-opening messages need an unused stream id */
	switch (type) {
	case M_HELLO:
		on_hello(c, id, &r);
		return;
	case M_PING:
		if (n <= 64) {
			send_frame(c, M_PONG, id, p, n);
			return;
		}
		break;
	case M_CONFIG:
		if (id == 0) {
			on_config(c, &r);
			return;
		}
		break;
	case M_SEED:
		if (id == 0) {
			on_seed(c, &r);
			return;
		}
		break;
	case M_PREPARE:
		if (id == 0) {
			on_prepare(c, &r);
			return;
		}
		break;
	case M_MOUNT:
		if (id == 0) {
			on_mount(c, &r);
			return;
		}
		break;
	case M_TRUST:
		if (id == 0) {
			on_trust(c, &r);
			return;
		}
		break;
	case M_NET:
		if (id == 0) {
			on_net(c, &r);
			return;
		}
		break;
	case M_SHUTDOWN:
		if (id == 0) {
			int mode = r_u8(&r);
			if (r_end(&r) < 0)
				break;
			send_result(c, 0, 0, "");
			do_shutdown(mode == 1);
			return;
		}
		break;
	case M_EXEC:
		if (fresh) {
			on_exec(c, id, &r);
			return;
		}
		break;
	case M_PUT:
		if (fresh) {
			on_put(c, id, &r);
			return;
		}
		break;
	case M_GET:
		if (fresh) {
			on_get(c, id, &r);
			return;
		}
		break;
	case M_STATUS:
		if (n == 0) {
			on_status(c, id);
			return;
		}
		break;
	case M_STDIN:
		if (s && s->kind == S_EXEC) {
			if ((s->tty ? s->fd_out : s->fd_in) < 0 || s->in_eof)
				return; /* no stdin asked for, or already closed: ignore */
			if (n)
				buf_put(&s->inb, p, n);
			else if (s->tty)
				buf_put(&s->inb, "\x04", 1); /* end of input on a tty is ^D */
			else
				s->in_eof = 1;
			return;
		}
		if (!s && id)
			return; /* late input for a finished session: harmless */
		break;
	case M_SIGNAL:
		if (s && s->kind == S_EXEC) {
			uint32_t sig = r_u32(&r);
			if (r_end(&r) < 0 || sig == 0 || sig > 64)
				break;
			if (kill(-s->pid, (int)sig) < 0)
				kill(s->pid, (int)sig);
			return;
		}
		if (!s && id)
			return;
		break;
	case M_RESIZE:
		if (s && s->kind == S_EXEC) {
			struct winsize ws = {.ws_row = r_u16(&r), .ws_col = r_u16(&r)};
			if (r_end(&r) < 0)
				break;
			if (s->tty)
				ioctl(s->fd_out, TIOCSWINSZ, &ws);
			return;
		}
		if (!s && id)
			return;
		break;
	case M_DATA:
		if (s && s->kind == S_PUT) {
			on_data(s, p, n);
			return;
		}
		break;
	}
	/* unknown type, bad payload, or a message that does not fit the stream */
	dbg("dropped frame type 0x%02x on stream %u", type, id);
	char m[80];
	snprintf(m, sizeof m, "dropped frame type 0x%02x", type);
	if (s) {
		sess_kill(s);
	}
	send_error(c, id, EPROTO, m);
}

void parse_frames(struct conn *c)
{
	struct buf *b = &c->ib;
	while (b->len && !c->dead) {
		if (b->len >= 2 && (b->p[0] != 0xA3 || b->p[1] != 0xB0)) {
			goto resync;
		}
		if (b->len == 1 && b->p[0] != 0xA3)
			goto resync;
		if (b->len < HDR)
			return;
		uint32_t len = (uint32_t)b->p[2] << 24 | (uint32_t)b->p[3] << 16 | (uint32_t)b->p[4] << 8 | b->p[5];
		if (len < 5 || len > 5 + MAX_PAYLOAD) {
			send_error(c, 0, EPROTO, "bad frame header");
			goto skip;
		}
		if (b->len < 6 + (size_t)len)
			return;
		{
			uint32_t id = (uint32_t)b->p[7] << 24 | (uint32_t)b->p[8] << 16 | (uint32_t)b->p[9] << 8 | b->p[10];
			/* copy out: a handler may append to or drop this buffer indirectly */
			size_t n = len - 5;
			unsigned char *pl = malloc(n ? n : 1);
			if (!pl)
				abort();
			memcpy(pl, b->p + HDR, n);
			int type = b->p[6];
			buf_drop(b, 6 + (size_t)len);
			dispatch(c, type, id, pl, n);
			free(pl);
		}
		continue;
resync:
		send_error(c, 0, EPROTO, "bad magic");
skip:
		{
			/* resynchronise at the next magic, keeping a trailing 0xA3 */
			size_t at;
			for (at = 1; at + 1 < b->len; at++)
				if (b->p[at] == 0xA3 && b->p[at + 1] == 0xB0)
					break;
			if (at + 1 >= b->len)
				at = b->p[b->len - 1] == 0xA3 ? b->len - 1 : b->len;
			buf_drop(b, at);
		}
	}
}

struct conn *conn_add(int in, int out, int reopen)
{
	if (nconns == (int)(sizeof conns / sizeof *conns)) {
		close(in);
		return NULL;
	}
	struct conn *c = calloc(1, sizeof *c);
	if (!c)
		abort();
	c->in = in, c->out = out, c->reopen = reopen;
	nonblock(in);
	if (out != in)
		nonblock(out);
	conns[nconns++] = c;
	return c;
}

void conn_lost(struct conn *c)
{
	for (int i = nsess - 1; i >= 0; i--)
		if (i < nsess && sess[i]->c == c)
			sess_kill(sess[i]);
	buf_free(&c->ib);
	buf_free(&c->ob);
}

void kill_ours(int sig)
{
	for (int i = 0; i < nsess; i++)
		if (sess[i]->pid > 0 && !sess[i]->reaped)
			kill(-sess[i]->pid, sig);
	if (A.pid > 0)
		kill(-A.pid, sig);
	if (A.business_ns.holder > 0)
		kill(A.business_ns.holder, sig);
	if (A.agent_ns.holder > 0)
		kill(A.agent_ns.holder, sig);
}

void wait_children(int ms)
{
	long long end = now_ms() + ms;
	while (now_ms() < end) {
		int st;
		pid_t p = waitpid(-1, &st, WNOHANG);
		if (p > 0) {
			reaped(p, st);
			continue;
		}
		if (p < 0 && errno == ECHILD)
			return;
		usleep(20000);
	}
}

void do_shutdown(int reboot_after)
{
	stopping = 1;
	logmsg("shutting down");
	for (int i = 0; i < nconns; i++) { /* the RESULT must reach the host first */
		int fl = fcntl(conns[i]->out, F_GETFL);
		fcntl(conns[i]->out, F_SETFL, fl & ~O_NONBLOCK);
		flush_conn(conns[i]);
	}
	if (O->pid1) {
		kill(-1, SIGTERM);
		wait_children(2000);
		kill(-1, SIGKILL);
		wait_children(500);
		boot_poweroff(reboot_after);
	}
	kill_ours(SIGTERM);
	wait_children(500);
	kill_ours(SIGKILL);
	wait_children(500);
	exit(0);
}

enum pk { P_SIG, P_LISTEN, P_NSX, P_CIN, P_COUT, P_SIN, P_SOUT, P_SERR, P_GET, P_NSXS };

int server_run(const struct server_opts *o)
{
	O = o;
	t0 = now_ms();
	signal(SIGPIPE, SIG_IGN);
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
	if (!o->pid1) /* orphans of our sessions come back to us, as they would to PID 1 */
		prctl(PR_SET_CHILD_SUBREAPER, 1);
	nsexec_listen();
	if (o->in_fd >= 0)
		conn_add(o->in_fd, o->out_fd, o->stream_reopen);
	logmsg("ready");

	struct pollfd *pf = NULL;
	struct { enum pk k; void *p; } *tag = NULL;
	size_t cap = 0;
	for (;;) {
		size_t need = 3 + (size_t)nconns * 2 + (size_t)nsess * 4;
		if (need > cap) {
			cap = need * 2;
			pf = realloc(pf, cap * sizeof *pf);
			tag = realloc(tag, cap * sizeof *tag);
			if (!pf || !tag)
				abort();
		}
		size_t n = 0;
#define ADD(fd_, ev_, k_, p_) (pf[n] = (struct pollfd){(fd_), (ev_), 0}, tag[n].k = (k_), tag[n].p = (p_), n++)
		long long now = now_ms();
		int timeout = -1;
		ADD(sigfd, POLLIN, P_SIG, NULL);
		if (o->listen_fd >= 0)
			ADD(o->listen_fd, POLLIN, P_LISTEN, NULL);
		if (nsx_listen >= 0)
			ADD(nsx_listen, POLLIN, P_NSX, NULL);
		for (int i = 0; i < nconns; i++) {
			struct conn *c = conns[i];
			if (c->hup_until > now) {
				int t = (int)(c->hup_until - now);
				timeout = timeout < 0 || t < timeout ? t : timeout;
			} else {
				ADD(c->in, POLLIN, P_CIN, c);
			}
			if (c->ob.len)
				ADD(c->out, POLLOUT, P_COUT, c);
		}
		for (int i = 0; i < nsess; i++) {
			struct sess *s = sess[i];
			int room = !s->c || s->c->ob.len < OUT_HIGH;
			if (s->kind == S_EXEC && !s->reaped) {
				if (s->fd_in >= 0 && (s->inb.len || s->in_eof) && !s->tty)
					ADD(s->fd_in, POLLOUT, P_SIN, s);
				else if (s->tty && s->inb.len)
					ADD(s->fd_out, POLLOUT, P_SIN, s);
				if (room && s->fd_out >= 0)
					ADD(s->fd_out, POLLIN, P_SOUT, s);
				if (room && s->fd_err >= 0 && s->fd_err != s->fd_out)
					ADD(s->fd_err, POLLIN, P_SERR, s);
			} else if (s->kind == S_GET && room) {
				ADD(s->fd_file, POLLIN, P_GET, s);
			} else if (s->kind == S_NSEXEC && s->sock >= 0) {
				ADD(s->sock, POLLIN, P_NSXS, s);
			}
		}
		if (A.configured && !strcmp(A.state, "backoff")) {
			int t = (int)(A.next_start - now);
			if (t <= 0) {
				A.restarts++;
				agent_launch();
				continue;
			}
			timeout = timeout < 0 || t < timeout ? t : timeout;
		}
		int rc = poll(pf, n, timeout);
		if (rc < 0) {
			if (errno != EINTR)
				logmsg("poll: %s", strerror(errno));
			continue;
		}
		/* handlers may free sessions/conns: check liveness before each use */
		for (size_t i = 0; i < n; i++) {
			if (!pf[i].revents)
				continue;
			void *p = tag[i].p;
			int alive = 1;
			if (tag[i].k >= P_SIN && tag[i].k != P_NSXS) {
				alive = 0;
				for (int j = 0; j < nsess; j++)
					alive |= sess[j] == p;
			} else if (tag[i].k == P_NSXS) {
				alive = 0;
				for (int j = 0; j < nsess; j++)
					alive |= sess[j] == p;
			} else if (tag[i].k == P_CIN || tag[i].k == P_COUT) {
				alive = 0;
				for (int j = 0; j < nconns; j++)
					alive |= conns[j] == p;
			}
			if (!alive)
				continue;
			switch (tag[i].k) {
			case P_SIG: {
				struct signalfd_siginfo si;
				while (read(sigfd, &si, sizeof si) > 0)
					;
				reap_all();
				break;
			}
			case P_LISTEN: {
				int fd = accept4(o->listen_fd, NULL, NULL, SOCK_CLOEXEC);
				if (fd >= 0)
					conn_add(fd, fd, 0);
				break;
			}
			case P_NSX:
				nsexec_accept();
				break;
			case P_CIN: {
				struct conn *c = p;
				unsigned char b[CHUNK];
				ssize_t r = read(c->in, b, sizeof b);
				if (r > 0) {
					buf_put(&c->ib, b, (size_t)r);
					parse_frames(c);
				} else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
					c->dead = 1;
				}
				break;
			}
			case P_COUT:
				flush_conn(p);
				break;
			case P_SIN: {
				struct sess *s = p;
				int fd = s->tty ? s->fd_out : s->fd_in;
				if (s->inb.len) {
					ssize_t w = write(fd, s->inb.p, s->inb.len);
					if (w > 0)
						buf_drop(&s->inb, (size_t)w);
					else if (w < 0 && errno != EAGAIN && errno != EINTR)
						s->inb.len = 0, s->in_eof = !s->tty; /* reader gone */
				}
				if (!s->inb.len && s->in_eof && !s->tty)
					closefd(&s->fd_in);
				break;
			}
			case P_SOUT:
			case P_SERR: {
				struct sess *s = p;
				if (tag[i].k == P_SOUT)
					pump_out(s, &s->fd_out, M_STDOUT, 0);
				else
					pump_out(s, &s->fd_err, M_STDERR, 0);
				break;
			}
			case P_GET:
				get_pump(p);
				break;
			case P_NSXS:
				nsexec_input(p);
				break;
			}
		}
		/* connections that ended */
		for (int i = 0; i < nconns; i++) {
			struct conn *c = conns[i];
			if (!c->dead)
				continue;
			conn_lost(c);
			if (c->reopen) {
				/* virtio-serial reports HUP while no host is attached: retry later */
				c->dead = 0;
				c->hup_until = now_ms() + 100;
				continue;
			}
			if (!o->pid1 && o->listen_fd < 0) {
				logmsg("channel closed");
				do_shutdown(0);
			}
			if (c->in != c->out)
				close(c->out);
			close(c->in);
			free(c);
			conns[i--] = conns[--nconns];
		}
	}
}
