/* Exec sessions: start a process in a namespace, pump its stdio, report its exit. */
#include "server.h"

struct sess *sess_new(struct conn *c, uint32_t id, enum skind kind)
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

struct sess *sess_find(struct conn *c, uint32_t id)
{
	for (int i = 0; i < nsess; i++)
		if (sess[i]->c == c && sess[i]->id == id && !sess[i]->dropped)
			return sess[i];
	return NULL;
}

void closefd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

void sess_free(struct sess *s)
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
void sess_kill(struct sess *s)
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
int pump_out(struct sess *s, int *fd, uint8_t type, int drain)
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

void sess_exited(struct sess *s)
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

char **env_merge(char **a, char **b, char **c, const char *extra)
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

const struct nsset *ns_for(int ns, int *err, const char **why)
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

void on_exec(struct conn *c, uint32_t id, struct rd *r)
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
	if (nss && nss == A.exec_ahead.ns && A.exec_ahead.pid > 0) { /* forked at PREPARE: it only execs */
		pid = spawn_finish(&A.exec_ahead, &req, &err, msg, sizeof msg);
		if (pid < 0 && err == EPIPE)
			err = 0, msg[0] = 0; /* gone: forked now */
	}
	if (pid < 0 && !err)
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
