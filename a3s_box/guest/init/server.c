/* The protocol server: one poll loop over the host channel(s), session pipes, the
 * nsexec socket and a signalfd for SIGCHLD. Single-threaded on purpose: PID 1 must
 * never block on one peer, so every fd is non-blocking and every peer has a buffer. */
#include "a3s.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#define RESOLVE_IN_ROOT 0x10
struct open_how_ { uint64_t flags, mode, resolve; };

#define OUT_HIGH (1u << 20) /* stop reading session output while the host lags this much */
#define CHUNK 65536

enum skind { S_EXEC, S_PUT, S_GET, S_NSEXEC };

struct conn {
	int in, out;
	int reopen;      /* virtio-serial: HUP = host side gone, keep the port */
	long long hup_until;
	int dead;
	struct buf ib, ob;
};

struct sess {
	struct conn *c;  /* NULL for nsexec, or once the connection went away */
	uint32_t id;
	enum skind kind;
	pid_t pid;
	int tty;
	int fd_in, fd_out, fd_err; /* our ends: child's stdin, stdout, stderr (tty: all fd_out) */
	struct buf inb;
	int in_eof;
	int reaped, wstatus;
	int dropped;     /* killed after a protocol error: send nothing more */
	int fd_file, fd_dir; /* PUT/GET */
	char *tmpname, *name;
	int sock;        /* nsexec */
};

static const struct server_opts *O;
static struct conn *conns[64];
static int nconns;
static struct sess **sess;
static int nsess, capsess;
static int sigfd = -1, nsx_listen = -1;
static long long t0;
static int stopping;

static struct {
	int configured;
	char *hostname, *workdir;
	char **env, **argv;
	unsigned agent_iso, business_iso;
	int restart;
	struct nsset agent_ns, business_ns;
	const char *state;
	pid_t pid;
	int restarts;
	char last_exit[48];
	long long next_start, started_at;
	int backoff_ms;
} A = {.state = "not-configured"};

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* --- output ----------------------------------------------------------------- */

static void flush_conn(struct conn *c)
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

static void send_frame(struct conn *c, uint8_t type, uint32_t stream, const void *p, size_t n)
{
	if (!c || c->dead)
		return;
	frame_put(&c->ob, type, stream, p, n);
	flush_conn(c);
}

static void send_errno_msg(struct conn *c, uint8_t type, uint32_t stream, int err, const char *msg)
{
	struct buf b = {0};
	w_u32(&b, (uint32_t)err);
	w_cstr(&b, msg);
	send_frame(c, type, stream, b.p, b.len);
	buf_free(&b);
}
#define send_result(c, s, e, m) send_errno_msg(c, M_RESULT, s, e, m)
#define send_error(c, s, e, m) send_errno_msg(c, M_ERROR, s, e, m)

static void exit_payload(struct buf *b, int kind, int value, const char *msg)
{
	w_u8(b, (uint8_t)kind);
	w_u32(b, (uint32_t)value);
	w_cstr(b, msg);
}

/* --- sessions ---------------------------------------------------------------- */

static struct sess *sess_new(struct conn *c, uint32_t id, enum skind kind)
{
	struct sess *s = calloc(1, sizeof *s);
	if (!s)
		abort();
	s->c = c, s->id = id, s->kind = kind;
	s->fd_in = s->fd_out = s->fd_err = s->fd_file = s->fd_dir = s->sock = -1;
	if (nsess == capsess) {
		capsess = capsess ? capsess * 2 : 16;
		sess = realloc(sess, (size_t)capsess * sizeof *sess);
		if (!sess)
			abort();
	}
	sess[nsess++] = s;
	return s;
}

static struct sess *sess_find(struct conn *c, uint32_t id)
{
	for (int i = 0; i < nsess; i++)
		if (sess[i]->c == c && sess[i]->id == id && !sess[i]->dropped)
			return sess[i];
	return NULL;
}

static void closefd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void sess_free(struct sess *s)
{
	for (int i = 0; i < nsess; i++)
		if (sess[i] == s) {
			sess[i] = sess[--nsess];
			break;
		}
	closefd(&s->fd_in);
	closefd(&s->fd_err);
	closefd(&s->fd_out);
	closefd(&s->fd_file);
	if (s->tmpname && s->fd_dir >= 0)
		unlinkat(s->fd_dir, s->tmpname, 0); /* an unfinished PUT leaves nothing behind */
	closefd(&s->fd_dir);
	closefd(&s->sock);
	free(s->tmpname);
	free(s->name);
	buf_free(&s->inb);
	free(s);
}

/* Stop a session without another word to its peer (protocol error, peer gone). */
static void sess_kill(struct sess *s)
{
	if (s->pid > 0 && !s->reaped) {
		kill(-s->pid, SIGKILL);
		kill(s->pid, SIGKILL);
		s->dropped = 1;
		s->c = NULL;
		return; /* freed when reaped */
	}
	sess_free(s);
}

/* Read what a session's output fd holds now; 0 on EOF/error, 1 if open. */
static int pump_out(struct sess *s, int *fd, uint8_t type, int drain)
{
	unsigned char b[CHUNK];
	for (;;) {
		ssize_t n = read(*fd, b, sizeof b);
		if (n > 0) {
			if (!s->dropped)
				send_frame(s->c, type, s->id, b, (size_t)n);
			if (!drain)
				return 1;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 1;
		/* EOF, or EIO from a pty master whose slave is gone */
		closefd(fd);
		return 0;
	}
}

static void sess_exited(struct sess *s)
{
	if (s->fd_out >= 0)
		pump_out(s, &s->fd_out, M_STDOUT, 1);
	if (s->fd_err >= 0)
		pump_out(s, &s->fd_err, M_STDERR, 1);
	int st = s->wstatus;
	int kind = WIFSIGNALED(st) ? EXIT_SIGNALED : EXIT_EXITED;
	int val = WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st);
	struct buf b = {0};
	exit_payload(&b, kind, val, "");
	if (s->kind == S_NSEXEC)
		(void)!send(s->sock, b.p, b.len, MSG_NOSIGNAL);
	else if (!s->dropped)
		send_frame(s->c, M_EXIT, s->id, b.p, b.len);
	buf_free(&b);
	sess_free(s);
}

/* --- environment --------------------------------------------------------------- */

/* The complete environment: later lists override earlier ones key by key; PATH defaults. */
static char **env_merge(char **a, char **b, char **c, const char *extra)
{
	char **lists[] = {a, b, c};
	size_t n = 3;
	for (int i = 0; i < 3; i++)
		for (char **p = lists[i]; p && *p; p++)
			n++;
	char **out = calloc(n, sizeof *out);
	if (!out)
		abort();
	size_t k = 0;
	int has_path = 0;
	for (int i = 0; i < 3; i++)
		for (char **p = lists[i]; p && *p; p++) {
			size_t kl = strcspn(*p, "=");
			size_t j;
			for (j = 0; j < k; j++)
				if (!strncmp(out[j], *p, kl) && out[j][kl] == '=')
					break;
			out[j] = *p;
			if (j == k)
				k++;
			if (kl == 4 && !strncmp(*p, "PATH", 4))
				has_path = 1;
		}
	static char path[1200];
	if (!has_path) {
		if (O->state_dir && strcmp(O->state_dir, "/.a3s"))
			snprintf(path, sizeof path, "PATH=%s:%s", DEFAULT_PATH, O->state_dir);
		else
			snprintf(path, sizeof path, "PATH=%s", DEFAULT_PATH);
		out[k++] = path;
	}
	if (extra && *extra)
		out[k++] = (char *)extra;
	out[k] = NULL;
	return out; /* points into the inputs: free only the vector */
}

static const struct nsset *ns_for(int ns, int *err, const char **why)
{
	if (ns == NS_ROOT)
		return NULL;
	if (!A.configured) {
		*err = ESRCH, *why = "the box is not configured yet (no CONFIG)";
		return NULL;
	}
	if (ns == NS_AGENT) {
		if (A.agent_ns.ok)
			return &A.agent_ns;
		*err = ESRCH, *why = "the agent namespace is gone";
		return NULL;
	}
	if (ns == NS_BUSINESS && A.business_ns.ok)
		return &A.business_ns;
	*err = ESRCH, *why = ns == NS_BUSINESS ? "this box has no business namespace" : "bad namespace";
	return NULL;
}

static char nsx_env[600];

/* --- the agent ------------------------------------------------------------------ */

static void agent_start(void)
{
	int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
	char **env = env_merge(A.env, NULL, NULL, nsx_env);
	struct spawn_req r = {.argv = A.argv, .env = env, .workdir = A.workdir, .ns = &A.agent_ns,
			      .fd_in = nul, .fd_out = g_console, .fd_err = g_console, .setsid = 1};
	int err = 0;
	char msg[256];
	pid_t pid = spawn(&r, &err, msg, sizeof msg);
	free(env);
	close(nul);
	if (pid < 0) {
		logmsg("agent not started: %s", msg);
		snprintf(A.last_exit, sizeof A.last_exit, "not-started:%d", err);
		A.pid = 0;
		A.started_at = now_ms();
		return;
	}
	A.pid = pid;
	A.started_at = now_ms();
	A.state = "running";
	logmsg("agent started: pid %d", (int)pid);
}

/* Decide what follows an agent exit (or a failed start): backoff, or stay exited. */
static void agent_after_exit(int failed)
{
	int again = A.restart == 2 || (A.restart == 1 && failed);
	if (!again || stopping) {
		A.state = "exited";
		return;
	}
	/* a run that lasted a while resets the crash-loop backoff */
	if (now_ms() - A.started_at > 10000)
		A.backoff_ms = 0;
	A.backoff_ms = A.backoff_ms ? A.backoff_ms * 2 : 100;
	if (A.backoff_ms > 30000)
		A.backoff_ms = 30000;
	A.next_start = now_ms() + A.backoff_ms;
	A.state = "backoff";
	dbg("agent restarts in %d ms", A.backoff_ms);
}

static void agent_launch(void)
{
	agent_start();
	if (!A.pid)
		agent_after_exit(1);
}

static void reaped(pid_t pid, int st)
{
	for (int i = 0; i < nsess; i++) {
		struct sess *s = sess[i];
		if (s->pid == pid && !s->reaped) {
			s->reaped = 1, s->wstatus = st;
			if (s->dropped)
				sess_free(s);
			else
				sess_exited(s);
			return;
		}
	}
	if (A.pid && pid == A.pid) {
		A.pid = 0;
		if (WIFSIGNALED(st))
			snprintf(A.last_exit, sizeof A.last_exit, "signaled:%d", WTERMSIG(st));
		else
			snprintf(A.last_exit, sizeof A.last_exit, "exited:%d", WEXITSTATUS(st));
		logmsg("agent %s", A.last_exit);
		agent_after_exit(!(WIFEXITED(st) && WEXITSTATUS(st) == 0));
		return;
	}
	if (pid == A.agent_ns.holder || pid == A.business_ns.holder) {
		struct nsset *n = pid == A.agent_ns.holder ? &A.agent_ns : &A.business_ns;
		n->holder = 0;
		if (!stopping)
			logmsg("%s namespace holder died", n == &A.agent_ns ? "agent" : "business");
		ns_close(n);
	}
}

static void reap_all(void)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
		reaped(pid, st);
}

/* --- messages --------------------------------------------------------------------- */

static void on_hello(struct conn *c, uint32_t id, struct rd *r)
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

static void on_config(struct conn *c, struct rd *r)
{
	if (A.configured) {
		send_result(c, 0, EBUSY, "already configured");
		return;
	}
	char *host = r_str(r);
	char **env = r_strlist(r);
	char **argv = r_strlist(r);
	char *wd = r_str(r);
	unsigned aiso = r_u32(r), biso = r_u32(r);
	int restart = r_u8(r);
	uint64_t mem = r_u64(r);
	uint32_t pids = r_u32(r);
	if (r_end(r) < 0 || restart > 2) {
		free(host), free(wd), strv_free(env), strv_free(argv);
		send_error(c, 0, EINVAL, "bad CONFIG payload");
		return;
	}
	A.configured = 1;
	A.hostname = host, A.env = env, A.argv = argv, A.workdir = wd;
	A.agent_iso = aiso, A.business_iso = biso, A.restart = restart;
	A.state = "starting";
	if (O->pid1 && *host)
		sethostname(host, strlen(host));
	char cg_agent[512] = "", cg_bus[512] = "";
	if (O->cgroup_root && *O->cgroup_root) {
		if (cgroup_setup(O->cgroup_root, mem, pids) == 0 || 1) {
			snprintf(cg_agent, sizeof cg_agent, "%s/agent/main", O->cgroup_root);
			snprintf(cg_bus, sizeof cg_bus, "%s/agent/business", O->cgroup_root);
		}
	}
	int rc = ns_create(&A.agent_ns, NULL, aiso, host, cg_agent);
	if (rc < 0) {
		A.state = "exited";
		char m[200];
		snprintf(m, sizeof m, "agent namespaces: %s", strerror(-rc));
		logmsg("%s", m);
		send_result(c, 0, -rc, m);
		return;
	}
	if (biso) {
		rc = ns_create(&A.business_ns, &A.agent_ns, biso, host, cg_bus);
		if (rc < 0) {
			A.state = "exited";
			char m[200];
			snprintf(m, sizeof m, "business namespaces: %s", strerror(-rc));
			logmsg("%s", m);
			send_result(c, 0, -rc, m);
			return;
		}
	}
	if (argv[0])
		agent_launch();
	else
		A.state = "exited";
	send_result(c, 0, 0, "");
}

static void on_exec(struct conn *c, uint32_t id, struct rd *r)
{
	int ns = r_u8(r), flags = r_u8(r);
	struct winsize ws = {.ws_row = r_u16(r), .ws_col = r_u16(r)};
	char **argv = r_strlist(r);
	char **env = r_strlist(r);
	char *wd = r_str(r);
	if (r_end(r) < 0 || !argv || !argv[0] || ns > 2) {
		strv_free(argv), strv_free(env), free(wd);
		send_error(c, id, EINVAL, "bad EXEC payload");
		return;
	}
	struct sess *s = sess_new(c, id, S_EXEC);
	int err = 0;
	const char *why = "";
	char msg[256] = "";
	const struct nsset *nss = ns_for(ns, &err, &why);
	int child_in = -1, child_out = -1, child_err = -1;
	pid_t pid = -1;
	if (err) {
		snprintf(msg, sizeof msg, "%s", why);
		goto done;
	}
	s->tty = flags & 1;
	if (s->tty) {
		int m, sl;
		if (openpty(&m, &sl, NULL, NULL, &ws) < 0) {
			err = errno;
			snprintf(msg, sizeof msg, "openpty: %s", strerror(errno));
			goto done;
		}
		fcntl(m, F_SETFD, FD_CLOEXEC);
		fcntl(sl, F_SETFD, FD_CLOEXEC);
		/* one fd for all directions: kept only as fd_out so it is closed exactly once */
		s->fd_out = m;
		child_in = child_out = child_err = sl;
	} else {
		int pi[2] = {-1, -1}, po[2], pe[2];
		if ((flags & 2) ? pipe2(pi, O_CLOEXEC) : (pi[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
			goto pipefail;
		if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0)
			goto pipefail;
		child_in = pi[0], s->fd_in = pi[1];
		s->fd_out = po[0], child_out = po[1];
		s->fd_err = pe[0], child_err = pe[1];
		if (0) {
pipefail:
			err = errno;
			snprintf(msg, sizeof msg, "pipe: %s", strerror(errno));
			goto done;
		}
	}
	const char *wdir = *wd ? wd : ns == NS_ROOT ? "/" : A.workdir && *A.workdir ? A.workdir : "/";
	char **fullenv = env_merge(A.env, env, NULL, ns == NS_AGENT ? nsx_env : NULL);
	struct spawn_req req = {.argv = argv, .env = fullenv, .workdir = wdir, .ns = nss,
				.tty = s->tty, .fd_in = child_in, .fd_out = child_out,
				.fd_err = child_err, .setsid = 1};
	pid = spawn(&req, &err, msg, sizeof msg);
	free(fullenv);
done:
	if (child_in >= 0)
		close(child_in);
	if (child_out >= 0 && child_out != child_in)
		close(child_out);
	if (child_err >= 0 && child_err != child_out)
		close(child_err);
	if (pid < 0) {
		struct buf b = {0};
		exit_payload(&b, EXIT_NOT_STARTED, err ? err : EIO, msg);
		send_frame(c, M_EXIT, id, b.p, b.len);
		buf_free(&b);
		dbg("exec %s: %s", argv[0], msg);
		sess_free(s);
	} else {
		s->pid = pid;
		for (int *fd = &s->fd_in; fd <= &s->fd_err; fd++)
			if (*fd >= 0)
				nonblock(*fd);
		struct buf b = {0};
		w_u32(&b, (uint32_t)pid);
		send_frame(c, M_STARTED, id, b.p, b.len);
		buf_free(&b);
		if (!(flags & 2) && !s->tty)
			closefd(&s->fd_in);
	}
	strv_free(argv), strv_free(env), free(wd);
}

/* Open `path` as seen from namespace `ns`: symlinks cannot climb out of its root. */
static int ns_open(int ns, const char *path, int flags, mode_t mode, int *err, const char **why)
{
	const struct nsset *n = ns_for(ns, err, why);
	if (*err)
		return -1;
	char root[64] = "/";
	if (n)
		snprintf(root, sizeof root, "/proc/%d/root", (int)n->member);
	int rfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rfd < 0) {
		*err = errno, *why = "namespace root";
		return -1;
	}
	struct open_how_ how = {.flags = (uint64_t)flags | O_CLOEXEC, .mode = mode,
				.resolve = RESOLVE_IN_ROOT};
	int fd = (int)syscall(SYS_openat2, rfd, path, &how, sizeof how);
	if (fd < 0 && errno == ENOSYS) /* kernels before 5.6 */
		fd = openat(rfd, path[0] == '/' ? path + 1 : path, flags | O_CLOEXEC, mode);
	if (fd < 0)
		*err = errno, *why = strerror(errno);
	close(rfd);
	return fd;
}

static void on_put(struct conn *c, uint32_t id, struct rd *r)
{
	int ns = r_u8(r);
	uint32_t mode = r_u32(r);
	char *path = r_str(r);
	if (r_end(r) < 0 || !*path || path[strlen(path) - 1] == '/') {
		free(path);
		send_error(c, id, EINVAL, "bad PUT payload");
		return;
	}
	int err = 0;
	const char *why = "";
	char *slash = strrchr(path, '/');
	char *dir = slash ? strndup(path, (size_t)(slash - path + 1)) : strdup(".");
	const char *base = slash ? slash + 1 : path;
	int dfd = ns_open(ns, dir, O_PATH | O_DIRECTORY, 0, &err, &why);
	free(dir);
	if (dfd < 0) {
		char m[300];
		snprintf(m, sizeof m, "%s: %s", path, why);
		send_result(c, id, err, m);
		free(path);
		return;
	}
	struct sess *s = sess_new(c, id, S_PUT);
	s->fd_dir = dfd;
	s->name = strdup(base);
	char tmp[300];
	snprintf(tmp, sizeof tmp, ".%s.a3s-put-%u", base, id);
	s->tmpname = strdup(tmp);
	s->fd_file = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (s->fd_file < 0 || fchmod(s->fd_file, mode & 07777) < 0) {
		char m[300];
		snprintf(m, sizeof m, "%s: %s", path, strerror(errno));
		send_result(c, id, errno, m);
		sess_free(s);
	}
	free(path);
}

static void on_data(struct sess *s, const unsigned char *p, size_t n)
{
	if (n) {
		while (n) {
			ssize_t w = write(s->fd_file, p, n);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				char m[300];
				snprintf(m, sizeof m, "%s: %s", s->name, strerror(errno));
				send_result(s->c, s->id, errno, m);
				sess_free(s);
				return;
			}
			p += w, n -= (size_t)w;
		}
		return;
	}
	int rc = close(s->fd_file);
	s->fd_file = -1;
	if (rc == 0)
		rc = renameat(s->fd_dir, s->tmpname, s->fd_dir, s->name);
	if (rc < 0) {
		send_result(s->c, s->id, errno, strerror(errno));
	} else {
		free(s->tmpname);
		s->tmpname = NULL;
		send_result(s->c, s->id, 0, "");
	}
	sess_free(s);
}

static void on_get(struct conn *c, uint32_t id, struct rd *r)
{
	int ns = r_u8(r);
	char *path = r_str(r);
	if (r_end(r) < 0 || !*path) {
		free(path);
		send_error(c, id, EINVAL, "bad GET payload");
		return;
	}
	int err = 0;
	const char *why = "";
	int fd = ns_open(ns, path, O_RDONLY, 0, &err, &why);
	struct stat st;
	if (fd >= 0 && fstat(fd, &st) == 0 && !S_ISREG(st.st_mode))
		close(fd), fd = -1, err = EISDIR, why = "not a regular file";
	if (fd < 0) {
		char m[300];
		snprintf(m, sizeof m, "%s: %s", path, why);
		send_result(c, id, err, m);
	} else {
		struct sess *s = sess_new(c, id, S_GET);
		s->fd_file = fd;
	}
	free(path);
}

static void get_pump(struct sess *s)
{
	unsigned char b[CHUNK];
	ssize_t n = read(s->fd_file, b, sizeof b);
	if (n < 0 && errno == EINTR)
		return;
	if (n > 0) {
		send_frame(s->c, M_DATA, s->id, b, (size_t)n);
		return;
	}
	send_frame(s->c, M_DATA, s->id, "", 0);
	send_result(s->c, s->id, n < 0 ? errno : 0, n < 0 ? strerror(errno) : "");
	sess_free(s);
}

static void on_status(struct conn *c, uint32_t id)
{
	char t[512];
	snprintf(t, sizeof t,
		 "agent_state=%s\nagent_pid=%d\nrestarts=%d\nlast_exit=%s\nuptime_ms=%lld\n"
		 "business=%d\nsessions=%d\n",
		 A.state, (int)A.pid, A.restarts, A.last_exit, now_ms() - t0,
		 A.business_ns.ok ? 1 : 0, nsess);
	struct buf b = {0};
	w_cstr(&b, t);
	send_frame(c, M_STATUS_REPLY, id, b.p, b.len);
	buf_free(&b);
}

static void do_shutdown(int reboot_after);

/* One whole frame from the host. A bad one is dropped; never fatal. */
static void dispatch(struct conn *c, int type, uint32_t id, const unsigned char *p, size_t n)
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

static void parse_frames(struct conn *c)
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

/* --- connections ---------------------------------------------------------------------- */

static struct conn *conn_add(int in, int out, int reopen)
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

static void conn_lost(struct conn *c)
{
	for (int i = nsess - 1; i >= 0; i--)
		if (i < nsess && sess[i]->c == c)
			sess_kill(sess[i]);
	buf_free(&c->ib);
	buf_free(&c->ob);
}

/* --- nsexec ------------------------------------------------------------------------------ */

static void nsexec_listen(void)
{
	if (!O->state_dir)
		return;
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof a.sun_path, "%s/nsexec.sock", O->state_dir);
	snprintf(nsx_env, sizeof nsx_env, "A3S_NSEXEC_SOCK=%s", a.sun_path);
	unlink(a.sun_path);
	nsx_listen = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (nsx_listen < 0 || bind(nsx_listen, (struct sockaddr *)&a, sizeof a) < 0 ||
	    listen(nsx_listen, 16) < 0) {
		logmsg("nsexec socket %s: %s", a.sun_path, strerror(errno));
		closefd(&nsx_listen);
		return;
	}
	chmod(a.sun_path, 0666);
}

static void nsexec_reply(int sock, int kind, int value, const char *msg)
{
	struct buf b = {0};
	exit_payload(&b, kind, value, msg);
	(void)!send(sock, b.p, b.len, MSG_NOSIGNAL);
	buf_free(&b);
}

static void nsexec_accept(void)
{
	int sock = accept4(nsx_listen, NULL, NULL, SOCK_CLOEXEC);
	if (sock < 0)
		return;
	/* the client sends its request right after connecting; do not let it stall PID 1 */
	struct timeval tv = {1, 0};
	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	unsigned char *msg = malloc(NSEXEC_MAX_MSG);
	char cbuf[CMSG_SPACE(3 * sizeof(int))];
	struct iovec iov = {msg, NSEXEC_MAX_MSG};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = sizeof cbuf};
	ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	int fds[3] = {-1, -1, -1};
	struct cmsghdr *cm = n > 0 ? CMSG_FIRSTHDR(&mh) : NULL;
	if (cm && cm->cmsg_type == SCM_RIGHTS && cm->cmsg_len == CMSG_LEN(3 * sizeof(int)))
		memcpy(fds, CMSG_DATA(cm), sizeof fds);
	struct rd r = {.p = msg, .len = n > 0 ? (size_t)n : 0};
	char **argv = r_strlist(&r);
	char **env = r_strlist(&r);
	char *cwd = r_str(&r);
	int err = 0;
	const char *why = "";
	char m[256] = "";
	if (n <= 0 || r_end(&r) < 0 || !argv || !argv[0] || fds[2] < 0) {
		nsexec_reply(sock, EXIT_NOT_STARTED, EINVAL, "bad nsexec request");
		goto out;
	}
	const struct nsset *ns = ns_for(NS_BUSINESS, &err, &why);
	if (err) {
		nsexec_reply(sock, EXIT_NOT_STARTED, err, why);
		goto out;
	}
	char **fullenv = env_merge(env, NULL, NULL, NULL);
	struct spawn_req req = {.argv = argv, .env = fullenv, .workdir = *cwd ? cwd : A.workdir,
				.ns = ns, .fd_in = fds[0], .fd_out = fds[1], .fd_err = fds[2],
				.setsid = 1};
	pid_t pid = spawn(&req, &err, m, sizeof m);
	if (pid < 0 && err == ENOENT && *cwd && !strncmp(m, "workdir", 7)) {
		/* the caller's cwd does not exist in the business mounts: use the default */
		req.workdir = A.workdir;
		pid = spawn(&req, &err, m, sizeof m);
	}
	free(fullenv);
	if (pid < 0) {
		nsexec_reply(sock, EXIT_NOT_STARTED, err, m);
		goto out;
	}
	struct sess *s = sess_new(NULL, 0, S_NSEXEC);
	s->pid = pid;
	s->sock = sock;
	nonblock(sock);
	sock = -1;
	nsexec_reply(s->sock, 255, pid, ""); /* "started" */
out:
	for (int i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (sock >= 0)
		close(sock);
	strv_free(argv), strv_free(env), free(cwd), free(msg);
}

/* A forwarded signal (u32), or the client went away (kill the session). */
static void nsexec_input(struct sess *s)
{
	unsigned char b[16];
	ssize_t n = recv(s->sock, b, sizeof b, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n == 4) {
		int sig = b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3];
		if (sig > 0 && sig < 65 && kill(-s->pid, sig) < 0)
			kill(s->pid, sig);
		return;
	}
	if (n <= 0) {
		closefd(&s->sock);
		sess_kill(s);
	}
}

/* --- shutdown --------------------------------------------------------------------------- */

static void kill_ours(int sig)
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

static void wait_children(int ms)
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

static void do_shutdown(int reboot_after)
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

/* --- the loop ------------------------------------------------------------------------------ */

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
