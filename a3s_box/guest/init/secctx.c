/* A container process's security context, as its OCI spec says and runc applies it:
 * what /.a3s/container does between entering the container and exec.
 *
 * Threat: the container's code is hostile and may be root inside it; the pod's VM, its
 * disk and the other containers of the pod must stay out of its reach, within what the
 * spec grants. So the container gets a /dev of its own (the spec's devices and the
 * standard ones, never the VM's disks), read-only once made, with every other mount of
 * the container nodev (a node made with CAP_MKNOD opens nothing), masked and read-only
 * paths, a read-only root
 * when asked; then its rlimits, umask, groups, ids, capability sets (bounding,
 * effective, permitted, inheritable, ambient), no_new_privs and its seccomp filter
 * (compiled on the host from the spec's profile, loaded last, right before exec). Any
 * step that fails ends the helper before exec: nothing runs with less confinement than
 * it was given. Flags are parsed here; the host builds them (a3s_box/k8s/security.py). */
#include "a3s.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define SEC_MAX 64
#define BPF_MAX 4096 /* instructions: the kernel's own limit */

struct sock_filter_ {
	uint16_t code;
	uint8_t jt, jf;
	uint32_t k;
};
struct sock_fprog_ {
	unsigned short len;
	struct sock_filter_ *filter;
};
struct cap_header_ {
	uint32_t version;
	int pid;
};
struct cap_data_ {
	uint32_t effective, permitted, inheritable;
};
#define CAP_V3 0x20080522

static struct {
	int has_user;
	uid_t uid;
	gid_t gid;
	gid_t groups[SEC_MAX];
	int ngroups;
	int umask_set;
	mode_t umask;
	int has_caps;
	uint64_t bnd, eff, prm, inh, amb;
	int nnp;
	int nrl;
	struct { int res; rlim_t soft, hard; } rl[SEC_MAX];
	struct sock_filter_ *bpf;
	unsigned short bpf_len;
	int ro_root;
	const char *masked[SEC_MAX], *ropaths[SEC_MAX], *sysctl[SEC_MAX];
	int nmasked, nro, nsysctl;
	struct { const char *path; char type; unsigned major, minor, mode; uid_t uid; gid_t gid; } dev[SEC_MAX];
	int ndev;
} S;

static int bad(const char *what, const char *v)
{
	fprintf(stderr, "a3s-box container: bad %s: %s\n", what, v);
	return -1;
}

static int parse_u64(const char *v, int base, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, base);
	if (errno || end == v || *end)
		return -1;
	*out = x;
	return 0;
}

/* absolute, and no ".." component */
static int safe_path(const char *p)
{
	if (p[0] != '/')
		return 0;
	for (const char *s = p; (s = strstr(s, "/..")) != NULL; s += 3)
		if (s[3] == '/' || s[3] == 0)
			return 0;
	return 1;
}

static int load_bpf(const char *file)
{
	int fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return bad("seccomp filter", file);
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size % 8 || st.st_size / 8 > BPF_MAX) {
		close(fd);
		return bad("seccomp filter size", file);
	}
	S.bpf = malloc((size_t)st.st_size);
	ssize_t got = S.bpf ? read(fd, S.bpf, (size_t)st.st_size) : -1;
	close(fd);
	if (got != st.st_size)
		return bad("seccomp filter", file);
	S.bpf_len = (unsigned short)(st.st_size / 8);
	return 0;
}

/* 1: FLAG (with VALUE) was a security flag and is taken; 0: not one of ours; -1: bad. */
int sec_flag(const char *flag, const char *v)
{
	uint64_t x, y, z;
	char buf[512];
	if (!strcmp(flag, "-U")) { /* UID:GID */
		if (sscanf(v, "%" SCNu64 ":%" SCNu64, &x, &y) != 2 || x > 0xFFFFFFFEu || y > 0xFFFFFFFEu)
			return bad("user", v);
		S.has_user = 1, S.uid = (uid_t)x, S.gid = (gid_t)y;
	} else if (!strcmp(flag, "-g")) { /* one additional group */
		if (parse_u64(v, 10, &x) < 0 || x > 0xFFFFFFFEu || S.ngroups >= SEC_MAX)
			return bad("group", v);
		S.groups[S.ngroups++] = (gid_t)x;
	} else if (!strcmp(flag, "-k")) { /* umask, octal */
		if (parse_u64(v, 8, &x) < 0 || x > 0777)
			return bad("umask", v);
		S.umask_set = 1, S.umask = (mode_t)x;
	} else if (!strcmp(flag, "-C")) { /* BND:EFF:PRM:INH:AMB, hex masks */
		unsigned long long m[5];
		if (sscanf(v, "%llx:%llx:%llx:%llx:%llx", &m[0], &m[1], &m[2], &m[3], &m[4]) != 5)
			return bad("capabilities", v);
		S.has_caps = 1, S.bnd = m[0], S.eff = m[1], S.prm = m[2], S.inh = m[3], S.amb = m[4];
	} else if (!strcmp(flag, "-n")) {
		S.nnp = 1;
		return 2; /* takes no value */
	} else if (!strcmp(flag, "-R")) {
		S.ro_root = 1;
		return 2;
	} else if (!strcmp(flag, "-l")) { /* RESOURCE:SOFT:HARD */
		if (sscanf(v, "%" SCNu64 ":%" SCNu64 ":%" SCNu64, &x, &y, &z) != 3 || x >= RLIM_NLIMITS ||
		    S.nrl >= SEC_MAX)
			return bad("rlimit", v);
		S.rl[S.nrl].res = (int)x, S.rl[S.nrl].soft = (rlim_t)y, S.rl[S.nrl].hard = (rlim_t)z, S.nrl++;
	} else if (!strcmp(flag, "-S")) {
		if (S.bpf || load_bpf(v) < 0)
			return -1;
	} else if (!strcmp(flag, "-M")) {
		if (!safe_path(v) || S.nmasked >= SEC_MAX)
			return bad("masked path", v);
		S.masked[S.nmasked++] = v;
	} else if (!strcmp(flag, "-O")) {
		if (!safe_path(v) || S.nro >= SEC_MAX)
			return bad("read-only path", v);
		S.ropaths[S.nro++] = v;
	} else if (!strcmp(flag, "-y")) { /* KEY=VALUE */
		const char *eq = strchr(v, '=');
		if (!eq || eq == v || strchr(v, '/') || strstr(v, "..") || S.nsysctl >= SEC_MAX)
			return bad("sysctl", v);
		S.sysctl[S.nsysctl++] = v;
	} else if (!strcmp(flag, "-d")) { /* PATH:TYPE:MAJOR:MINOR:MODE:UID:GID */
		unsigned long long ma, mi, mo, u, g;
		char t;
		snprintf(buf, sizeof buf, "%s", v);
		char *colon = strchr(buf, ':');
		if (!colon || S.ndev >= SEC_MAX)
			return bad("device", v);
		*colon = 0;
		if (sscanf(colon + 1, "%c:%llu:%llu:%llo:%llu:%llu", &t, &ma, &mi, &mo, &u, &g) != 6 ||
		    (t != 'c' && t != 'b' && t != 'p') || strncmp(buf, "/dev/", 5) || !safe_path(buf) || mo > 07777)
			return bad("device", v);
		S.dev[S.ndev].path = strdup(buf);
		S.dev[S.ndev].type = t, S.dev[S.ndev].major = (unsigned)ma, S.dev[S.ndev].minor = (unsigned)mi;
		S.dev[S.ndev].mode = (unsigned)mo, S.dev[S.ndev].uid = (uid_t)u, S.dev[S.ndev].gid = (gid_t)g;
		S.ndev++;
	} else
		return 0;
	return 1;
}

static int fail(const char *what, const char *arg)
{
	fprintf(stderr, "a3s-box container: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(errno));
	return 127;
}

static int node(const char *root, const char *path, mode_t type, unsigned major, unsigned minor,
		unsigned mode, uid_t uid, gid_t gid)
{
	char p[4096];
	snprintf(p, sizeof p, "%s%s", root, path);
	unlink(p);
	if (mknod(p, type | (mode & 07777), makedev(major, minor)) < 0 || chown(p, uid, gid) < 0 ||
	    chmod(p, mode & 07777) < 0)
		return fail("device", path);
	return 0;
}

/* A /dev of the container's own at ROOT/dev (before pivot_root): tmpfs, the standard
 * devices, a private devpts, /dev/shm, and the spec's devices; never the VM's disks. */
int sec_make_dev(const char *root)
{
	char p[4096];
	snprintf(p, sizeof p, "%s/dev", root);
	mkdir(p, 0755);
	if (mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k") < 0)
		return fail("mount /dev in", root);
	static const struct { const char *name; unsigned minor; } mem[] = {
		{"/dev/null", 3}, {"/dev/zero", 5}, {"/dev/full", 7}, {"/dev/random", 8}, {"/dev/urandom", 9}};
	for (size_t i = 0; i < sizeof mem / sizeof mem[0]; i++)
		if (node(root, mem[i].name, S_IFCHR, 1, mem[i].minor, 0666, 0, 0))
			return 127;
	if (node(root, "/dev/tty", S_IFCHR, 5, 0, 0666, 0, 0))
		return 127;
	snprintf(p, sizeof p, "%s/dev/pts", root);
	if (mkdir(p, 0755) < 0 ||
	    mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5") < 0)
		return fail("mount devpts in", root);
	snprintf(p, sizeof p, "%s/dev/shm", root);
	if (mkdir(p, 01777) < 0 ||
	    mount("shm", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k") < 0)
		return fail("mount /dev/shm in", root);
	static const char *links[][2] = {{"pts/ptmx", "/dev/ptmx"}, {"/proc/self/fd", "/dev/fd"},
					 {"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"},
					 {"/proc/self/fd/2", "/dev/stderr"}};
	for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
		snprintf(p, sizeof p, "%s%s", root, links[i][1]);
		if (symlink(links[i][0], p) < 0)
			return fail("symlink", links[i][1]);
	}
	for (int i = 0; i < S.ndev; i++) { /* the spec's, by number: its own choice of the VM's */
		mode_t t = S.dev[i].type == 'b' ? S_IFBLK : S.dev[i].type == 'p' ? S_IFIFO : S_IFCHR;
		char dir[4096];
		snprintf(dir, sizeof dir, "%s%s", root, S.dev[i].path);
		for (char *s = dir + strlen(root) + 5; *s; s++) /* its folders below /dev */
			if (*s == '/') {
				*s = 0;
				mkdir(dir, 0755);
				*s = '/';
			}
		if (node(root, S.dev[i].path, t, S.dev[i].major, S.dev[i].minor, S.dev[i].mode, S.dev[i].uid,
			 S.dev[i].gid))
			return 127;
	}
	/* read-only from now on: the only mount where a device node opens (the root, the
	 * binds and /dev/shm are nodev) takes no new one, CAP_MKNOD or not */
	snprintf(p, sizeof p, "%s/dev", root);
	if (mount(NULL, p, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID, "mode=755,size=65536k") < 0)
		return fail("make /dev read-only in", root);
	return 0;
}

/* After pivot_root, still root: sysctls, a read-only root, masked and read-only paths. */
int sec_mounts(void)
{
	char p[512];
	for (int i = 0; i < S.nsysctl; i++) {
		const char *eq = strchr(S.sysctl[i], '=');
		int n = snprintf(p, sizeof p, "/proc/sys/%.*s", (int)(eq - S.sysctl[i]), S.sysctl[i]);
		for (char *s = p + 10; s < p + n; s++)
			if (*s == '.')
				*s = '/';
		int fd = open(p, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, eq + 1, strlen(eq + 1)) < 0) {
			int e = errno;
			if (fd >= 0)
				close(fd);
			errno = e;
			return fail("sysctl", S.sysctl[i]);
		}
		close(fd);
	}
	if (S.ro_root && mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NODEV, NULL) < 0)
		return fail("make the root read-only", NULL);
	for (int i = 0; i < S.nmasked; i++) {
		struct stat st;
		if (lstat(S.masked[i], &st) < 0)
			continue; /* nothing there: nothing to hide */
		int rc = S_ISDIR(st.st_mode) ? mount("tmpfs", S.masked[i], "tmpfs", MS_RDONLY, "size=0")
					     : mount("/dev/null", S.masked[i], NULL, MS_BIND, NULL);
		if (rc < 0)
			return fail("mask", S.masked[i]);
	}
	for (int i = 0; i < S.nro; i++) {
		if (mount(S.ropaths[i], S.ropaths[i], NULL, MS_BIND | MS_REC, NULL) < 0) {
			if (errno == ENOENT)
				continue;
			return fail("read-only path", S.ropaths[i]);
		}
		if (mount(NULL, S.ropaths[i], NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_REC, NULL) < 0)
			return fail("read-only path", S.ropaths[i]);
	}
	return 0;
}

static int load_seccomp(void)
{
	struct sock_fprog_ prog = {.len = S.bpf_len, .filter = S.bpf};
	if (prctl(PR_SET_SECCOMP, 2 /* SECCOMP_MODE_FILTER */, &prog, 0, 0) < 0)
		return fail("seccomp", NULL);
	return 0;
}

static int last_cap(void)
{
	int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
	char b[16] = "";
	if (fd >= 0) {
		if (read(fd, b, sizeof b - 1) < 0)
			b[0] = 0;
		close(fd);
	}
	int n = atoi(b);
	return n > 0 && n < 64 ? n : 40;
}

/* Right before exec: the process's own confinement, in runc's order. */
int sec_process(void)
{
	for (int i = 0; i < S.nrl; i++) {
		struct rlimit r = {.rlim_cur = S.rl[i].soft, .rlim_max = S.rl[i].hard};
		if (setrlimit(S.rl[i].res, &r) < 0)
			return fail("rlimit", NULL);
	}
	if (S.umask_set)
		umask(S.umask);
	/* without no_new_privs a filter needs CAP_SYS_ADMIN, gone below: load it now (the
	 * profile must allow what follows, as runc's must) */
	if (S.bpf && !S.nnp && load_seccomp())
		return 127;
	if (S.has_caps) {
		for (int c = 0, last = last_cap(); c <= last; c++)
			if (!(S.bnd >> c & 1) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
				return fail("drop a capability from the bounding set", NULL);
		if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
			return fail("keep capabilities", NULL);
	}
	if (S.has_user) {
		if (setgroups((size_t)S.ngroups, S.groups) < 0)
			return fail("groups", NULL);
		if (setresgid(S.gid, S.gid, S.gid) < 0 || setresuid(S.uid, S.uid, S.uid) < 0)
			return fail("become the container's user", NULL);
	}
	if (S.has_caps) {
		struct cap_header_ h = {.version = CAP_V3, .pid = 0};
		struct cap_data_ d[2] = {{(uint32_t)S.eff, (uint32_t)S.prm, (uint32_t)S.inh},
					 {(uint32_t)(S.eff >> 32), (uint32_t)(S.prm >> 32), (uint32_t)(S.inh >> 32)}};
		if (syscall(SYS_capset, &h, d) < 0)
			return fail("capabilities", NULL);
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
			return fail("ambient capabilities", NULL);
		for (int c = 0; c < 64; c++)
			if (S.amb >> c & 1 && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) < 0)
				return fail("raise an ambient capability", NULL);
		prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
	}
	if (S.nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return fail("no_new_privs", NULL);
	if (S.bpf && S.nnp && load_seccomp())
		return 127;
	return 0;
}
