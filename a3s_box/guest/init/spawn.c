/* Namespaces and process creation.
 *
 * A namespace set (agent, or business nested in it) is kept alive by a holder: a child
 * of init that unshares the namespaces and, with a new pid namespace, forks the pid-ns
 * init ("member") that mounts a fresh /proc and reaps orphans there. Init opens
 * /proc/<member>/ns/<type> once and keeps the fds; every later process enters with setns.
 * To put a process into a pid namespace while keeping it init's direct child (so init
 * sees its exit status), init switches its own pid_for_children around the fork. */
#include "a3s.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

struct report { int32_t err; char msg[240]; };

static void reset_signals(void)
{
	sigset_t all;
	sigfillset(&all);
	for (int s = 1; s < 65; s++)
		signal(s, SIG_DFL);
	sigprocmask(SIG_UNBLOCK, &all, NULL);
}

static int enter(const struct nsset *ns)
{
	/* mnt last: it also resets root and cwd to the namespace's */
	if (ns->fd_ipc >= 0 && setns(ns->fd_ipc, CLONE_NEWIPC) < 0)
		return -1;
	if (ns->fd_uts >= 0 && setns(ns->fd_uts, CLONE_NEWUTS) < 0)
		return -1;
	if (ns->fd_net >= 0 && setns(ns->fd_net, CLONE_NEWNET) < 0)
		return -1;
	if (ns->fd_mnt >= 0 && setns(ns->fd_mnt, CLONE_NEWNS) < 0)
		return -1;
	return 0;
}

/* Fork with pid_for_children switched to `pidns_fd` (-1 = our own). */
static pid_t fork_into(int pidns_fd)
{
	int self = -1;
	if (pidns_fd >= 0) {
		self = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
		if (self < 0 || setns(pidns_fd, CLONE_NEWPID) < 0) {
			int e = errno;
			if (self >= 0)
				close(self);
			errno = e;
			return -1;
		}
	}
	pid_t pid = fork();
	if (self >= 0) {
		int e = errno;
		if (pid != 0 && setns(self, CLONE_NEWPID) < 0)
			logmsg("cannot return to own pid namespace: %s", strerror(errno));
		close(self);
		errno = e;
	}
	return pid;
}

static void __attribute__((noreturn)) child_fail(int rfd, int err, const char *fmt, const char *arg)
{
	struct report rep = {.err = err};
	snprintf(rep.msg, sizeof rep.msg, fmt, arg, strerror(err));
	(void)!write(rfd, &rep, sizeof rep);
	_exit(127);
}

/* In the child, between fork and exec: its session, cgroup and namespaces. */
static void child_enter(const struct spawn_req *r, int rfd)
{
	reset_signals();
	if (r->setsid)
		setsid();
	if (r->ns && r->ns->cgroup_procs >= 0)
		(void)!write(r->ns->cgroup_procs, "0", 1);
	if (r->ns && enter(r->ns) < 0)
		child_fail(rfd, errno, "%senter namespaces: %s", "");
	if (r->ns && r->ns->contain && r->ns->contain->on && contain_process(r->ns->contain) < 0)
		child_fail(rfd, errno, "%scontaining business code: %s", "");
}

/* ... then its stdio, folder, environment and program. */
static void __attribute__((noreturn)) child_exec(const struct spawn_req *r, int rfd)
{
	/* move the stdio fds out of 0..2 first so the dup2s cannot clobber each other */
	int in = fcntl(r->fd_in, F_DUPFD_CLOEXEC, 10);
	int out = r->tty ? in : fcntl(r->fd_out, F_DUPFD_CLOEXEC, 10);
	int er = r->tty ? in : fcntl(r->fd_err, F_DUPFD_CLOEXEC, 10);
	if (in < 0 || out < 0 || er < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(er, 2) < 0)
		child_fail(rfd, errno, "%sstdio: %s", "");
	if (r->tty && ioctl(0, TIOCSCTTY, 0) < 0)
		child_fail(rfd, errno, "%scontrolling tty: %s", "");
	const char *wd = r->workdir && *r->workdir ? r->workdir : "/";
	if (chdir(wd) < 0)
		child_fail(rfd, errno, "workdir %s: %s", wd);
	environ = r->env;
	execvp(r->argv[0], r->argv);
	child_fail(rfd, errno, "%s: %s", r->argv[0]);
}

/* The parent's side: PID once it exec'd (the CLOEXEC report pipe closed empty), or -1
 * with what the child reported. */
static pid_t await_exec(pid_t pid, int report, int *err, char *msg, size_t msglen)
{
	struct report rep;
	ssize_t n;
	do
		n = read(report, &rep, sizeof rep);
	while (n < 0 && errno == EINTR);
	close(report);
	if (n == (ssize_t)sizeof rep) {
		waitpid(pid, NULL, 0);
		rep.msg[sizeof rep.msg - 1] = 0;
		*err = rep.err;
		snprintf(msg, msglen, "%s", rep.msg);
		return -1;
	}
	return pid; /* exec succeeded: the CLOEXEC pipe closed with nothing in it */
}

pid_t spawn(const struct spawn_req *r, int *err, char *msg, size_t msglen)
{
	int rp[2];
	if (pipe2(rp, O_CLOEXEC) < 0) {
		*err = errno;
		snprintf(msg, msglen, "pipe: %s", strerror(errno));
		return -1;
	}
	pid_t pid = fork_into(r->ns ? r->ns->fd_pid : -1);
	if (pid < 0) {
		*err = errno;
		snprintf(msg, msglen, "fork: %s", strerror(errno));
		close(rp[0]);
		close(rp[1]);
		return -1;
	}
	if (pid == 0) {
		close(rp[0]);
		child_enter(r, rp[1]);
		child_exec(r, rp[1]);
	}
	close(rp[1]);
	return await_exec(pid, rp[0], err, msg, msglen);
}

/* --- a process forked ahead of its exec ----------------------------------------------
 * spawn() in two halves: spawn_ahead() forks the process into its namespaces, session
 * and cgroup now, and it waits; spawn_finish() sends it its stdio, program, arguments,
 * environment and folder, and it execs. A template does the first half before its
 * snapshot (PREPARE: the agent's, and one for the first exec in the agent's
 * namespaces), so that no clone forks, joins namespaces or moves a process between
 * cgroups for them (under TCG each is kernel code translated afresh per clone). Only
 * the exec is left for after the restore: the program's address space and its
 * randomness (ASLR, AT_RANDOM) come from the clone's own, reseeded kernel.
 * The waiting process keeps nothing of init's but its two descriptors to init. */

/* The request: one message (SOCK_SEQPACKET) in the protocol's encoding, `strlist argv,
 * strlist env, str folder, u8 tty`, with the three stdio descriptors attached; no larger
 * than an nsexec request, which is the same thing. */
static void __attribute__((noreturn)) ahead_child(const struct spawn_req *shape, int rfd, int req)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	prctl(PR_SET_NAME, "a3s-ahead"); /* what ps shows until it execs */
	child_enter(shape, rfd);
	for (int fd = 3; fd < 1024; fd++) /* no channel, client socket or file of init's held open */
		if (fd != rfd && fd != req)
			close(fd);
	unsigned char *msg = malloc(NSEXEC_MAX_MSG);
	int fds[3];
	ssize_t n = msg ? recv_with_fds(req, msg, NSEXEC_MAX_MSG, fds) : -1;
	if (n <= 0)
		_exit(127); /* init let it go (spawn_cancel) or died */
	struct rd r = {.p = msg, .len = (size_t)n};
	struct spawn_req run = *shape;
	run.argv = r_strlist(&r);
	run.env = r_strlist(&r);
	run.workdir = r_str(&r);
	run.tty = r_u8(&r);
	if (r_end(&r) < 0 || !run.argv || !run.argv[0] || fds[2] < 0) /* init's own making: checked all the same */
		child_fail(rfd, EINVAL, "%srequest: %s", "");
	run.fd_in = fds[0], run.fd_out = fds[1], run.fd_err = fds[2];
	child_exec(&run, rfd);
}

int spawn_ahead(const struct spawn_req *shape, struct ahead *out)
{
	int rp[2], sp[2];
	out->pid = 0, out->report = out->req = -1, out->ns = shape->ns;
	if (pipe2(rp, O_CLOEXEC) < 0)
		return -errno;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
		int e = errno;
		close(rp[0]), close(rp[1]);
		return -e;
	}
	pid_t pid = fork_into(shape->ns ? shape->ns->fd_pid : -1);
	if (pid < 0) {
		int e = errno;
		close(rp[0]), close(rp[1]), close(sp[0]), close(sp[1]);
		return -e;
	}
	if (pid == 0) {
		close(rp[0]), close(sp[0]);
		ahead_child(shape, rp[1], sp[1]);
	}
	close(rp[1]), close(sp[1]);
	out->pid = pid, out->report = rp[0], out->req = sp[0];
	return 0;
}

void spawn_ahead_lost(struct ahead *a, int status)
{
	struct report rep;
	ssize_t n = a->report >= 0 ? read(a->report, &rep, sizeof rep) : -1;
	if (n == (ssize_t)sizeof rep) {
		rep.msg[sizeof rep.msg - 1] = 0;
		logmsg("a process forked ahead failed: %s", rep.msg);
	} else {
		logmsg("a process forked ahead ended (status 0x%x)", (unsigned)status);
	}
	spawn_cancel(a);
}

void spawn_cancel(struct ahead *a)
{
	if (a->req >= 0)
		close(a->req); /* it reads nothing and exits */
	if (a->report >= 0)
		close(a->report);
	a->pid = 0, a->report = a->req = -1;
}

pid_t spawn_finish(struct ahead *a, const struct spawn_req *r, int *err, char *msg, size_t msglen)
{
	struct buf b = {0};
	w_cstrlist(&b, r->argv);
	w_cstrlist(&b, r->env);
	w_cstr(&b, r->workdir ? r->workdir : "");
	w_u8(&b, (uint8_t)r->tty);
	int fds[3] = {r->fd_in, r->tty ? r->fd_in : r->fd_out, r->tty ? r->fd_in : r->fd_err};
	pid_t pid = a->pid;
	int report = a->report;
	int ok = r->ns == a->ns && b.len <= NSEXEC_MAX_MSG && send_with_fds(a->req, b.p, b.len, fds) == (ssize_t)b.len;
	buf_free(&b);
	close(a->req);
	a->pid = 0, a->report = a->req = -1;
	if (!ok) {
		close(report);
		*err = EPIPE;
		snprintf(msg, msglen, "the process forked ahead is gone");
		return -1;
	}
	return await_exec(pid, report, err, msg, msglen);
}

/* Bring up the loopback of the current network namespace (a new one starts down). */
void lo_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr = {0};
	strcpy(ifr.ifr_name, "lo");
	if (s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
		ioctl(s, SIOCSIFFLAGS, &ifr);
	}
	if (s >= 0)
		close(s);
}

/* The pid-ns init of a namespace set: reap whatever gets orphaned there, forever. */
static void __attribute__((noreturn)) reaper(void)
{
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	for (;;) {
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		sigwaitinfo(&chld, NULL);
	}
}

static void send_ready(int sock, int32_t err)
{
	(void)!send(sock, &err, sizeof err, MSG_NOSIGNAL);
}

/* Runs in the forked holder: never returns. */
static void __attribute__((noreturn))
holder(int sock, const struct nsset *parent, unsigned flags, const char *hostname, int cg,
       const struct contain *contain)
{
	reset_signals();
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	setsid();
	if (cg >= 0)
		(void)!write(cg, "0", 1);
	if (parent && enter(parent) < 0) {
		send_ready(sock, errno);
		_exit(1);
	}
	int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nul >= 0) {
		dup2(nul, 0);
		dup2(nul, 1);
	}
	/* drop every inherited fd but the console and our socket (no exec will close them) */
	for (int fd = 3; fd < 1024; fd++)
		if (fd != sock && fd != g_console)
			close(fd);
	int cl = (flags & ISO_MOUNT ? CLONE_NEWNS : 0) | (flags & ISO_PID ? CLONE_NEWPID : 0) |
		 (flags & ISO_IPC ? CLONE_NEWIPC : 0) | (flags & ISO_UTS ? CLONE_NEWUTS : 0) |
		 (flags & ISO_NET ? CLONE_NEWNET : 0);
	if (cl && unshare(cl) < 0) {
		send_ready(sock, errno);
		_exit(1);
	}
	/* our /proc must not leak back into the parent's mounts: private, or a slave that
	 * receives init's later mounts (volumes) and sends nothing back */
	if (flags & ISO_MOUNT)
		mount(NULL, "/", NULL, MS_REC | (flags & ISO_FOLLOW ? MS_SLAVE : MS_PRIVATE), NULL);
	if (contain && contain->on) {
		char why[240];
		if (contain_mounts(contain, why, sizeof why) < 0) {
			int e = errno ? errno : EIO;
			logmsg("%s", why);
			send_ready(sock, e);
			_exit(1);
		}
	}
	if ((flags & ISO_UTS) && hostname && *hostname)
		sethostname(hostname, strlen(hostname));
	if (flags & ISO_NET)
		lo_up();
	if (!(flags & ISO_PID)) {
		send_ready(sock, 0);
		for (;;)
			pause();
	}
	pid_t y = fork();
	if (y < 0) {
		send_ready(sock, errno);
		_exit(1);
	}
	if (y == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if ((flags & ISO_MOUNT) &&
		    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
			send_ready(sock, errno);
			_exit(1);
		}
		send_ready(sock, 0);
		close(sock);
		reaper();
	}
	close(sock);
	int st;
	while (waitpid(y, &st, 0) < 0 && errno == EINTR)
		;
	_exit(0);
}

static int open_ns(pid_t pid, const char *name)
{
	char p[64];
	snprintf(p, sizeof p, "/proc/%d/ns/%s", (int)pid, name);
	return open(p, O_RDONLY | O_CLOEXEC);
}

unsigned ns_flags(unsigned flags, const struct contain *contain)
{
	if (flags & ISO_PID)
		flags |= ISO_MOUNT; /* a pid namespace needs its own /proc, hence its own mounts */
	if (contain && contain->on)
		flags |= ISO_MOUNT; /* contained code gets a root of its own */
	return flags;
}

int ns_create(struct nsset *out, const struct nsset *parent, unsigned flags,
	      const char *hostname, const char *cgroup_dir, const struct contain *contain)
{
	memset(out, 0, sizeof *out);
	out->fd_mnt = out->fd_ipc = out->fd_uts = out->fd_net = out->fd_pid = out->cgroup_procs = -1;
	flags = ns_flags(flags, contain);
	if (cgroup_dir && *cgroup_dir) {
		char p[512];
		snprintf(p, sizeof p, "%s/cgroup.procs", cgroup_dir);
		out->cgroup_procs = open(p, O_WRONLY | O_CLOEXEC);
		if (out->cgroup_procs < 0)
			logmsg("cgroup %s: %s", p, strerror(errno));
	}
	int sp[2], one = 1;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
		return -errno;
	setsockopt(sp[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
	pid_t x = fork_into(parent ? parent->fd_pid : -1);
	if (x < 0) {
		int e = errno;
		close(sp[0]);
		close(sp[1]);
		return -e;
	}
	if (x == 0) {
		close(sp[0]);
		holder(sp[1], parent, flags, hostname, out->cgroup_procs, contain);
	}
	close(sp[1]);
	out->holder = x;
	/* the kernel stamps the sender's pid, translated into our pid namespace */
	int32_t status = EIO;
	char cbuf[CMSG_SPACE(sizeof(struct ucred))];
	struct iovec iov = {&status, sizeof status};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = sizeof cbuf};
	ssize_t n;
	do
		n = recvmsg(sp[0], &mh, 0);
	while (n < 0 && errno == EINTR);
	close(sp[0]);
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	if (n != (ssize_t)sizeof status || status != 0 || !c || c->cmsg_type != SCM_CREDENTIALS) {
		kill(x, SIGKILL);
		waitpid(x, NULL, 0);
		out->holder = 0;
		return -(n == (ssize_t)sizeof status && status ? status : EIO);
	}
	struct ucred cr;
	memcpy(&cr, CMSG_DATA(c), sizeof cr);
	out->member = cr.pid;
	out->fd_mnt = open_ns(cr.pid, "mnt");
	out->fd_ipc = open_ns(cr.pid, "ipc");
	out->fd_uts = open_ns(cr.pid, "uts");
	out->fd_net = open_ns(cr.pid, "net");
	out->fd_pid = open_ns(cr.pid, "pid");
	if (out->fd_mnt < 0 || out->fd_ipc < 0 || out->fd_uts < 0 || out->fd_net < 0 ||
	    out->fd_pid < 0) {
		int e = errno;
		ns_close(out);
		return -e;
	}
	out->contain = contain;
	out->ok = 1;
	return 0;
}

void ns_close(struct nsset *ns)
{
	int *fds[] = {&ns->fd_mnt, &ns->fd_ipc, &ns->fd_uts, &ns->fd_net, &ns->fd_pid,
		      &ns->cgroup_procs};
	for (size_t i = 0; i < sizeof fds / sizeof *fds; i++)
		if (*fds[i] >= 0) {
			close(*fds[i]);
			*fds[i] = -1;
		}
	if (ns->holder > 0)
		kill(ns->holder, SIGKILL);
	ns->ok = 0;
}
