/* /.a3s/container: one container of a pod, inside the pod's VM (containerd's shim).
 *
 *   container -r ROOT [-w CWD] [-h HOSTNAME] [-b SRC:DST[:ro]]... [-c NAME]
 *             [-m MEMORY_BYTES] [-p PIDS] [-q QUOTA:PERIOD] -- ARGV...
 *   container -j NAME [-w CWD] -- ARGV...      (a further process in container NAME)
 *   container -P [-w CWD] -- ARGV...           (the pod's first container, in place)
 * Each but -s and -T also takes the process's security context (secctx.c): user,
 * groups, umask, capabilities, no_new_privs, rlimits, seccomp; with -r also a read-only
 * root, masked and read-only paths, sysctls and devices. Its /dev is always its own.
 *   container -s NAME FILE VALUE...            (new limits: cgroup FILEs of NAME)
 *   container -T [-u UID:GID] [-w CWD] [-- ARGV...]
 *                                  (a build's RUN: the disk's /tmp, optionally as a user;
 *                                   without ARGV it executes the script on its stdin)
 *
 * ROOT is the container's root file system (the snapshotter's mounts, shared by the
 * host through virtio-fs). The process gets a mount and a pid namespace of its own
 * (and a UTS one with -h); the pod's network and IPC stay shared, as in Kubernetes.
 * With -c it runs in the cgroup /sys/fs/cgroup/a3s/NAME with the OCI limits given, and
 * -j NAME later joins its namespaces and cgroup (`ctr task exec`, ExecSync).
 * The helper stays as the container's parent: it forwards signals and exits as the
 * container did (re-raising a fatal signal), so the host's session sees the real
 * status. An OOM kill is recorded in /run/a3s-oom/NAME for the host to read. */
#include "a3s.h"
#include "exit_as.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define CG_BASE "/sys/fs/cgroup/a3s"
#define PID_DIR "/run/a3s-ctr"
#define MAX_BINDS 64

extern char **environ;

struct bind { char *src, *dst; int ro; };

static pid_t g_child;

static void forward(int sig)
{
	if (g_child > 0)
		kill(g_child, sig);
}

static int die(const char *what, const char *arg)
{
	fprintf(stderr, "a3s-box container: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(errno));
	return 127;
}

static int put(const char *dir, const char *file, const char *val)
{
	char p[512];
	snprintf(p, sizeof p, "%s/%s", dir, file);
	int fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = write(fd, val, strlen(val));
	close(fd);
	return n < 0 ? -1 : 0;
}

/* mkdir -p of PATH (absolute, inside the container's root already joined). */
static int make_path(const char *path, int as_file)
{
	char buf[4096];
	if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
		return errno = ENAMETOOLONG, -1;
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	struct stat st;
	if (lstat(buf, &st) == 0)
		return 0;
	if (as_file) {
		int fd = open(buf, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		return fd < 0 ? -1 : close(fd);
	}
	return mkdir(buf, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

static int bind_into(const char *root, const struct bind *b)
{
	char dst[4096];
	struct stat st;
	if (b->dst[0] != '/' || strstr(b->dst, "..") || stat(b->src, &st) < 0)
		return errno = errno ? errno : EINVAL, -1;
	snprintf(dst, sizeof dst, "%s%s", root, b->dst);
	if (make_path(dst, !S_ISDIR(st.st_mode)) < 0 || mount(b->src, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
		return -1;
	/* nodev: a device node made here (CAP_MKNOD) opens nothing of the VM */
	if (mount(NULL, dst, NULL, MS_REMOUNT | MS_BIND | MS_NODEV | (b->ro ? MS_RDONLY : 0), NULL) < 0)
		return -1;
	return 0;
}

static int setup_cgroup(const char *name, uint64_t mem, uint32_t pids, const char *cpu)
{
	char dir[512], v[64];
	snprintf(dir, sizeof dir, CG_BASE "/%s", name);
	/* controllers: what the kernel lacks only costs the limit */
	put("/sys/fs/cgroup", "cgroup.subtree_control", "+cpu");
	put(CG_BASE, "cgroup.subtree_control", "+memory +pids +cpu");
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -1;
	if (mem) {
		snprintf(v, sizeof v, "%" PRIu64, mem);
		if (put(dir, "memory.max", v) < 0)
			return -1;
		put(dir, "memory.swap.max", "0");
	}
	if (pids) {
		snprintf(v, sizeof v, "%" PRIu32, pids);
		if (put(dir, "pids.max", v) < 0)
			return -1;
	}
	if (cpu && *cpu) {
		char q[64];
		snprintf(q, sizeof q, "%s", cpu);
		char *colon = strchr(q, ':');
		if (colon)
			*colon = ' ';
		if (put(dir, "cpu.max", q) < 0)
			return -1;
	}
	return put(dir, "cgroup.procs", "0");
}

/* After the container ended: keep the OOM kill count for the host, drop the cgroup. */
static void finish_cgroup(const char *name)
{
	char p[512], line[128];
	snprintf(p, sizeof p, CG_BASE "/%s/memory.events", name);
	FILE *f = fopen(p, "re");
	unsigned long long n = 0;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "oom_kill %llu", &n) == 1)
			break;
	if (f)
		fclose(f);
	if (n) {
		mkdir("/run/a3s-oom", 0755);
		snprintf(p, sizeof p, "/run/a3s-oom/%s", name);
		int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dprintf(fd, "%llu\n", n);
			close(fd);
		}
	}
	/* move out first: a cgroup with a process in it (us) cannot go, and a3s/ has
	 * children with controllers (no processes of its own): the root takes us */
	put("/sys/fs/cgroup", "cgroup.procs", "0");
	snprintf(p, sizeof p, CG_BASE "/%s", name);
	rmdir(p);
}

static int enter_root(const char *root, struct bind *binds, int nbinds, const char *hostname)
{
	char p[4096];
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return die("make mounts private", NULL);
	if (mount(root, root, NULL, MS_BIND | MS_REC, NULL) < 0 ||
	    mount(NULL, root, NULL, MS_REMOUNT | MS_BIND | MS_NODEV, NULL) < 0)
		return die("bind", root);
	for (int i = 0; i < nbinds; i++)
		if (bind_into(root, &binds[i]) < 0)
			return die("bind", binds[i].dst);
	snprintf(p, sizeof p, "%s/proc", root);
	if (make_path(p, 0) < 0 || mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		return die("mount proc in", root);
	int rc = sec_make_dev(root); /* a /dev of its own: never the VM's disks */
	if (rc)
		return rc;
	snprintf(p, sizeof p, "%s/sys", root);
	if (make_path(p, 0) == 0 && mount("/sys", p, NULL, MS_BIND | MS_REC, NULL) == 0)
		mount(NULL, p, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL);
	if (hostname && sethostname(hostname, strlen(hostname)) < 0)
		return die("hostname", hostname);
	/* pivot_root onto itself, then detach the old root: nothing of the VM's stays */
	if (chdir(root) < 0)
		return die("chdir", root);
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		return die("pivot_root", root);
	if (umount2(".", MNT_DETACH) < 0)
		return die("detach the old root", NULL);
	if (chdir("/") < 0)
		return die("chdir", "/");
	return sec_mounts();
}

static int valid_name(const char *name)
{
	return *name && !strchr(name, '/') && strcmp(name, ".") && strcmp(name, "..");
}

/* Whole or not at all: a joiner polls for it right after Start. */
static void write_pidfile(const char *name, pid_t pid)
{
	char p[512], tmp[520];
	mkdir(PID_DIR, 0755);
	snprintf(p, sizeof p, PID_DIR "/%s", name);
	snprintf(tmp, sizeof tmp, PID_DIR "/.%s.tmp", name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd >= 0) {
		dprintf(fd, "%d\n", (int)pid);
		close(fd);
		rename(tmp, p);
	}
}

/* Enter container NAME: its cgroup, then (after the fork that enters its pid
 * namespace) its mount and UTS namespaces. Returns the open ns fds in fds[]. */
static int open_join(const char *name, int fds[3])
{
	char p[512], line[32];
	if (!valid_name(name))
		return errno = EINVAL, -1;
	snprintf(p, sizeof p, PID_DIR "/%s", name);
	/* an exec may come right after Start: the container's helper writes its pidfile
	 * just after its fork */
	FILE *f = NULL;
	for (int t = 0; !(f = fopen(p, "re")) && errno == ENOENT && t < 1000; t++)
		usleep(10000);
	if (!f)
		return -1;
	int pid = 0;
	if (!fgets(line, sizeof line, f) || (pid = atoi(line)) <= 0) {
		fclose(f);
		return errno = ESRCH, -1;
	}
	fclose(f);
	const char *kinds[3] = {"pid", "mnt", "uts"};
	for (int k = 0; k < 3; k++) {
		snprintf(p, sizeof p, "/proc/%d/ns/%s", pid, kinds[k]);
		if ((fds[k] = open(p, O_RDONLY | O_CLOEXEC)) < 0)
			return -1;
	}
	snprintf(p, sizeof p, CG_BASE "/%s", name);
	put(p, "cgroup.procs", "0"); /* without a cgroup (no -c) it stays in ours */
	return setns(fds[0], CLONE_NEWPID);
}

static int usage(void)
{
	fprintf(stderr, "usage: container -r ROOT [-w CWD] [-h HOSTNAME] [-b SRC:DST[:ro]]... "
			"[-c NAME] [-m BYTES] [-p PIDS] [-q QUOTA:PERIOD] [SECURITY] -- ARGV...\n"
			"       container -j NAME [-w CWD] [SECURITY] -- ARGV...\n"
			"       container -P [-w CWD] [SECURITY] -- ARGV...\n"
			"  SECURITY: [-U UID:GID] [-g GID]... [-k UMASK] [-C BND:EFF:PRM:INH:AMB] [-n] "
			"[-l RES:SOFT:HARD]... [-S BPF_FILE] [-R] [-M PATH]... [-O PATH]... "
			"[-y KEY=VALUE]... [-d PATH:TYPE:MAJOR:MINOR:MODE:UID:GID]...\n"
			"       container -s NAME FILE VALUE...\n"
			"       container -T [-u UID:GID] [-w CWD] [-- ARGV...]\n");
	return 2;
}

/* RUN <<EOF whose content starts with #!: the content (our stdin) executed as a file, so
 * the kernel reads its #! line as it would a script on disk. The memfd stays open across
 * exec (no CLOEXEC): the interpreter opens the script as /proc/self/fd/N. */
static int run_script(void)
{
	int fd = memfd_create("run-heredoc", 0);
	if (fd < 0)
		return die("memfd_create", NULL);
	char buf[65536];
	ssize_t n;
	while ((n = read(0, buf, sizeof buf)) > 0)
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(fd, buf + off, (size_t)(n - off));
			if (w < 0 && errno != EINTR)
				return die("script", NULL);
			off += w > 0 ? w : 0;
		}
	if (n < 0)
		return die("script", NULL);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (null < 0 || dup2(null, 0) < 0)
		return die("stdin", "/dev/null");
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	char *args[] = {path, NULL};
	execv(path, args);
	return die("exec", "the heredoc's #! line");
}

/* A build's RUN: with the disk's own /tmp (a RUN's files there are the image's, as in
 * Docker; the guest's tmpfs stays for everyone else) and, under USER, as UID:GID with no
 * supplementary groups. */
static int run_step(const char *user, const char *cwd, char **argv)
{
	if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return die("unshare", NULL);
	if (umount2("/tmp", MNT_DETACH) < 0 && errno != EINVAL)
		return die("umount", "/tmp");
	if (user) {
		char *end;
		unsigned long uid = strtoul(user, &end, 10), gid = uid;
		if (end == user || (*end && *end != ':'))
			return usage();
		if (*end == ':') {
			const char *g = end + 1;
			gid = strtoul(g, &end, 10);
			if (end == g || *end)
				return usage();
		}
		if (setgroups(0, NULL) < 0 || setgid((gid_t)gid) < 0 || setuid((uid_t)uid) < 0)
			return die("become", user);
	}
	if (chdir(cwd) < 0)
		return die("workdir", cwd);
	if (!argv[0])
		return run_script();
	execvp(argv[0], argv);
	return die("exec", argv[0]);
}

static int set_limits(int argc, char **argv)
{
	char dir[512];
	if (argc < 5 || argc % 2 == 0 || !valid_name(argv[2]))
		return usage();
	snprintf(dir, sizeof dir, CG_BASE "/%s", argv[2]);
	for (int i = 3; i + 1 < argc; i += 2) {
		/* only the limits a container's resources name, never a path */
		if (strcmp(argv[i], "memory.max") && strcmp(argv[i], "pids.max") && strcmp(argv[i], "cpu.max"))
			return usage();
		if (put(dir, argv[i], argv[i + 1]) < 0)
			return die(argv[i], argv[i + 1]);
	}
	return 0;
}

int container_main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "-s"))
		return set_limits(argc, argv);
	const char *root = NULL, *cwd = "/", *hostname = NULL, *cg = NULL, *cpu = NULL, *join = NULL,
		   *user = NULL;
	uint64_t mem = 0;
	uint32_t pids = 0;
	struct bind binds[MAX_BINDS];
	int nbinds = 0, i = 1, step = 0, in_place = 0;
	for (; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--")) {
			i++;
			break;
		}
		if (!strcmp(a, "-T")) {
			step = 1;
			continue;
		}
		if (!strcmp(a, "-P")) {
			in_place = 1;
			continue;
		}
		int taken = sec_flag(a, i + 1 < argc ? argv[i + 1] : "");
		if (taken < 0)
			return 2;
		if (taken == 2) /* a flag without a value */
			continue;
		if (i + 1 >= argc)
			return usage();
		const char *v = argv[++i];
		if (taken == 1)
			continue;
		if (!strcmp(a, "-r"))
			root = v;
		else if (!strcmp(a, "-w"))
			cwd = v;
		else if (!strcmp(a, "-h"))
			hostname = v;
		else if (!strcmp(a, "-c"))
			cg = v;
		else if (!strcmp(a, "-j"))
			join = v;
		else if (!strcmp(a, "-u"))
			user = v;
		else if (!strcmp(a, "-m"))
			mem = strtoull(v, NULL, 10);
		else if (!strcmp(a, "-p"))
			pids = (uint32_t)strtoul(v, NULL, 10);
		else if (!strcmp(a, "-q"))
			cpu = v;
		else if (!strcmp(a, "-b") && nbinds < MAX_BINDS) {
			char *s = strdup(v), *c1 = strchr(s, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
			if (!c1)
				return usage();
			*c1 = 0;
			if (c2)
				*c2 = 0;
			binds[nbinds++] = (struct bind){.src = s, .dst = c1 + 1, .ro = c2 && !strcmp(c2 + 1, "ro")};
		} else
			return usage();
	}
	if (step && !root && !join)
		return run_step(user, cwd, argv + i); /* no ARGV: the script on stdin */
	if (in_place) { /* the pod's first container: its namespaces are the agent's already */
		if (root || join || step || i >= argc)
			return usage();
		if (chdir(cwd) < 0)
			return die("workdir", cwd);
		int rc = sec_process();
		if (rc)
			return rc;
		execvp(argv[i], argv + i);
		return die("exec", argv[i]);
	}
	if ((!root && !join) || (root && join) || step || i >= argc)
		return usage();
	int nsfd[3] = {-1, -1, -1};
	if (join) {
		if (open_join(join, nsfd) < 0)
			return die("join container", join);
		cg = NULL; /* its cgroup is the container's: not ours to remove */
	} else {
		if (cg && (!valid_name(cg) || setup_cgroup(cg, mem, pids, cpu) < 0))
			return die("cgroup", cg);
		/* the pid namespace is for the child; the mount one must be the child's alone
		 * (a shared one would pivot our root too) */
		if (unshare(CLONE_NEWPID) < 0)
			return die("unshare", NULL);
	}
	/* the pidfile is what execs join by: written once the child is in its own mount
	 * namespace and root, or an exec right after Start would join the VM's */
	int ready[2] = {-1, -1};
	if (!join && cg && pipe2(ready, O_CLOEXEC) < 0)
		return die("pipe", NULL);
	g_child = fork();
	if (g_child < 0)
		return die("fork", NULL);
	if (g_child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* a helper killed outright takes its container along */
		if (getppid() == 1)
			_exit(137);
		if (join) {
			if (setns(nsfd[2], CLONE_NEWUTS) < 0 || setns(nsfd[1], CLONE_NEWNS) < 0)
				_exit(die("join container", join));
		} else {
			if (unshare(CLONE_NEWNS | (hostname ? CLONE_NEWUTS : 0)) < 0)
				_exit(die("unshare", NULL));
			int rc = enter_root(root, binds, nbinds, hostname);
			if (rc)
				_exit(rc);
			if (ready[1] >= 0) {
				close(ready[0]);
				if (write(ready[1], "r", 1) != 1)
					_exit(die("ready", NULL));
				close(ready[1]);
			}
		}
		if (chdir(cwd) < 0)
			_exit(die("workdir", cwd));
		int rc = sec_process(); /* the last step before exec: seccomp is loaded here */
		if (rc)
			_exit(rc);
		execvp(argv[i], argv + i);
		_exit(die("exec", argv[i]));
	}
	if (ready[0] >= 0) {
		char r;
		ssize_t n;
		close(ready[1]);
		while ((n = read(ready[0], &r, 1)) < 0 && errno == EINTR)
			;
		close(ready[0]);
		if (n == 1) /* else the child failed before its root was made: nothing to join */
			write_pidfile(cg, g_child);
	}
	struct sigaction sa = {.sa_handler = forward};
	sigemptyset(&sa.sa_mask);
	for (int s = 1; s < 65; s++)
		if (s != SIGCHLD && s != SIGKILL && s != SIGSTOP)
			sigaction(s, &sa, NULL);
	int st = 0;
	while (waitpid(g_child, &st, 0) < 0 && errno == EINTR)
		;
	if (cg) {
		char p[512];
		snprintf(p, sizeof p, PID_DIR "/%s", cg);
		unlink(p);
		finish_cgroup(cg);
	}
	if (WIFSIGNALED(st))
		return die_by_signal(WTERMSIG(st));
	return WEXITSTATUS(st);
}
