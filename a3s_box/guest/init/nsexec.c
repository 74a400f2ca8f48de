/* `nsexec -- CMD...`: run CMD in the box's business namespace and exit with its status.
 *
 * Init serves a SOCK_SEQPACKET socket ($A3S_NSEXEC_SOCK, default /.a3s/nsexec.sock)
 * visible in the agent's mounts. We send one message: strlist argv, strlist env,
 * str cwd (protocol field encodings) with our fds 0,1,2 attached (SCM_RIGHTS). Init
 * answers with EXIT-shaped messages (u8 kind, i32 value, str message): first kind 255
 * "started" (value = pid) or kind 2 "not started", then the final one. We forward the
 * signals a terminal or supervisor would send us as u32 messages. */
#include "a3s.h"
#include "exit_as.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;
static int sock = -1;

static void forward(int sig)
{
	unsigned char m[4] = {0, 0, 0, (unsigned char)sig};
	(void)!send(sock, m, 4, MSG_NOSIGNAL);
}

static int die(const char *what, int code)
{
	fprintf(stderr, "nsexec: %s\n", what);
	return code;
}

static int reply(struct rd *r, unsigned char *b, size_t cap)
{
	ssize_t n;
	do
		n = recv(sock, b, cap, 0);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return -1;
	*r = (struct rd){.p = b, .len = (size_t)n};
	return r_u8(r);
}

int nsexec_main(int argc, char **argv)
{
	int i = 1;
	if (i < argc && !strcmp(argv[i], "--"))
		i++;
	if (i >= argc || (argv[i][0] == '-' && argv[i][1]))
		return die("usage: nsexec [--] COMMAND [ARG...]", 2);
	const char *path = getenv("A3S_NSEXEC_SOCK");
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof a.sun_path, "%s", path && *path ? path : "/.a3s/nsexec.sock");
	sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&a, sizeof a) < 0) {
		char m[200];
		snprintf(m, sizeof m, "cannot reach a3s-init at %s: %s", a.sun_path, strerror(errno));
		return die(m, 126);
	}
	struct buf b = {0};
	w_cstrlist(&b, argv + i); /* argv[argc] is NULL */
	w_cstrlist(&b, environ);
	char cwd[4096];
	w_cstr(&b, getcwd(cwd, sizeof cwd) ? cwd : "");
	if (b.len > NSEXEC_MAX_MSG)
		return die("argument list and environment too long", 126);
	int fds[3];
	for (int k = 0; k < 3; k++)
		fds[k] = fcntl(k, F_GETFD) < 0 ? open("/dev/null", O_RDWR) : k;
	if (send_with_fds(sock, b.p, b.len, fds) < 0) {
		char m[200];
		snprintf(m, sizeof m, "send to a3s-init: %s", strerror(errno));
		return die(m, 126);
	}
	buf_free(&b);

	unsigned char rb[600];
	struct rd r;
	int kind = reply(&r, rb, sizeof rb);
	int value = (int)r_u32(&r);
	char *msg = r_str(&r);
	if (kind == EXIT_NOT_STARTED) {
		fprintf(stderr, "nsexec: %s\n", msg && *msg ? msg : strerror(value));
		return value == ENOENT ? 127 : 126;
	}
	if (kind != 255)
		return die("a3s-init did not start the command", 126);
	free(msg);
	static const int fwd[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
	struct sigaction sa = {.sa_handler = forward, .sa_flags = SA_RESTART};
	for (size_t k = 0; k < sizeof fwd / sizeof *fwd; k++)
		sigaction(fwd[k], &sa, NULL);
	kind = reply(&r, rb, sizeof rb);
	value = (int)r_u32(&r);
	if (kind == EXIT_EXITED)
		return value;
	if (kind == EXIT_SIGNALED) /* die the same way, so our caller sees what the command saw */
		return die_by_signal(value);
	return die("lost a3s-init", 255);
}
