/* The init side of nsexec (see nsexec.c for the client and the message format). */
#include "server.h"

void nsexec_listen(void)
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

void nsexec_reply(int sock, int kind, int value, const char *msg)
{
	struct buf b = {0};
	exit_payload(&b, kind, value, msg);
	(void)!send(sock, b.p, b.len, MSG_NOSIGNAL);
	buf_free(&b);
}

void nsexec_accept(void)
{
	int sock = accept4(nsx_listen, NULL, NULL, SOCK_CLOEXEC);
	if (sock < 0)
		return;
	/* the client sends its request right after connecting; do not let it stall PID 1 */
	struct timeval tv = {1, 0};
	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	unsigned char *msg = malloc(NSEXEC_MAX_MSG);
	int fds[3];
	ssize_t n = recv_with_fds(sock, msg, NSEXEC_MAX_MSG, fds);
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
void nsexec_input(struct sess *s)
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
