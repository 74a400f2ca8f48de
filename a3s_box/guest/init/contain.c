/* Business code contained like a container inside the VM.
 *
 * Threat: the agent and the business code it launches are hostile to each other
 * (docs/security.md). Business code must not read or change what the agent keeps
 * (its /tmp, its files), reach the VM's devices (the root disk, /dev/mem, /dev/kmsg,
 * the host channel), mount file systems, load modules or regain privileges. So, for
 * a contained business namespace:
 *
 *   contain_mounts()   in the business namespaces' holder, after its unshare: the
 *                      agent's whole tree read-only, nosuid and nodev (mount_setattr,
 *                      AT_RECURSIVE), but the declared shares (writable, still
 *                      nosuid/nodev); a /tmp of its own; a minimal /dev of its own
 *                      (null zero full random urandom tty, ptmx on a devpts instance
 *                      of its own, shm).
 *   contain_process()  in every business process between fork and exec: no_new_privs,
 *                      every capability dropped (bounding set, then uid/gid, then
 *                      capset and ambient for uid 0), and a seccomp filter in the
 *                      spirit of docker's default profile (mounts, modules, kexec,
 *                      namespaces, bpf, perf, keyrings, raw I/O, clock and reboot
 *                      calls fail with EPERM; another ABI's calls too).
 *
 * A failure of either fails the business namespace or the process: never half
 * contained. */
#include "a3s.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#define A3S_AT_RECURSIVE 0x8000
#define A3S_MOUNT_ATTR_RDONLY 0x1
#define A3S_MOUNT_ATTR_NOSUID 0x2
#define A3S_MOUNT_ATTR_NODEV 0x4

struct a3s_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };

static int setattr(const char *path, uint64_t set, uint64_t clr)
{
	struct a3s_mount_attr a = {.attr_set = set, .attr_clr = clr};
	return (int)syscall(SYS_mount_setattr, AT_FDCWD, path, A3S_AT_RECURSIVE, &a, sizeof a);
}

static int node(const char *path, mode_t mode, unsigned maj, unsigned min)
{
	if (mknod(path, mode, makedev(maj, min)) < 0 && errno != EEXIST)
		return -1;
	return chmod(path, mode & 07777);
}

int contain_mounts(const struct contain *c, char *why, size_t whylen)
{
	const char *step = "";
#define STEP(what, expr)                   \
	do {                               \
		step = what;               \
		if ((expr) < 0)            \
			goto fail;         \
	} while (0)
	for (char **s = c->share; s && *s; s++) {
		step = *s;
		if (mount(*s, *s, NULL, MS_BIND | MS_REC, NULL) < 0)
			goto fail;
	}
	STEP("read-only root", setattr("/", A3S_MOUNT_ATTR_RDONLY | A3S_MOUNT_ATTR_NOSUID |
						A3S_MOUNT_ATTR_NODEV, 0));
	for (char **s = c->share; s && *s; s++)
		STEP(*s, setattr(*s, 0, A3S_MOUNT_ATTR_RDONLY));
	STEP("/tmp", mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"));
	STEP("/dev", mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k"));
	STEP("/dev/null", node("/dev/null", S_IFCHR | 0666, 1, 3));
	STEP("/dev/zero", node("/dev/zero", S_IFCHR | 0666, 1, 5));
	STEP("/dev/full", node("/dev/full", S_IFCHR | 0666, 1, 7));
	STEP("/dev/random", node("/dev/random", S_IFCHR | 0666, 1, 8));
	STEP("/dev/urandom", node("/dev/urandom", S_IFCHR | 0666, 1, 9));
	STEP("/dev/tty", node("/dev/tty", S_IFCHR | 0666, 5, 0));
	STEP("/dev/pts", mkdir("/dev/pts", 0755));
	STEP("/dev/pts", mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
			       "newinstance,ptmxmode=0666,mode=0620"));
	STEP("/dev/ptmx", symlink("pts/ptmx", "/dev/ptmx"));
	STEP("/dev/shm", mkdir("/dev/shm", 01777));
	STEP("/dev/shm", mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"));
	STEP("/dev/fd", symlink("/proc/self/fd", "/dev/fd"));
	STEP("/dev/stdin", symlink("/proc/self/fd/0", "/dev/stdin"));
	STEP("/dev/stdout", symlink("/proc/self/fd/1", "/dev/stdout"));
	STEP("/dev/stderr", symlink("/proc/self/fd/2", "/dev/stderr"));
	STEP("/dev read-only", mount(NULL, "/dev", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC,
				     "mode=755,size=64k"));
	return 0;
#undef STEP
fail:
	snprintf(why, whylen, "containing business code: %s: %s", step, strerror(errno));
	return -1;
}

/* --- the seccomp filter ------------------------------------------------------ */
struct a3s_sock_filter { uint16_t code; uint8_t jt, jf; uint32_t k; };
struct a3s_sock_fprog { unsigned short len; struct a3s_sock_filter *filter; };
#define LD_W_ABS 0x20
#define JEQ_K 0x15
#define JGE_K 0x35
#define RET_K 0x06
#define RET_ALLOW 0x7fff0000u
#define RET_ERRNO(e) (0x00050000u | (e))
#if defined(__x86_64__)
#define A3S_AUDIT_ARCH 0xc000003eu
#elif defined(__aarch64__)
#define A3S_AUDIT_ARCH 0xc00000b7u
#endif

static const long denied[] = {
	SYS_mount, SYS_umount2, SYS_pivot_root, SYS_chroot, SYS_swapon, SYS_swapoff, SYS_reboot,
	SYS_kexec_load, SYS_init_module, SYS_finit_module, SYS_delete_module, SYS_bpf,
	SYS_perf_event_open, SYS_keyctl, SYS_add_key, SYS_request_key, SYS_unshare, SYS_setns,
	SYS_open_by_handle_at, SYS_name_to_handle_at, SYS_userfaultfd, SYS_acct, SYS_settimeofday,
	SYS_clock_settime, SYS_clock_adjtime, SYS_adjtimex, SYS_syslog, SYS_quotactl, SYS_vhangup,
	SYS_process_vm_writev, SYS_lookup_dcookie, SYS_sethostname, SYS_setdomainname,
#ifdef SYS_kexec_file_load
	SYS_kexec_file_load,
#endif
#ifdef SYS_iopl
	SYS_iopl, SYS_ioperm,
#endif
#ifdef SYS_create_module
	SYS_create_module,
#endif
#ifdef SYS_uselib
	SYS_uselib,
#endif
	428 /* open_tree */, 429 /* move_mount */, 430 /* fsopen */, 431 /* fsconfig */,
	432 /* fsmount */, 433 /* fspick */, 442 /* mount_setattr */,
};
#define NDENIED (sizeof denied / sizeof *denied)

#define JSET_K 0x45
#define NSFLAGS 0x7e020080u /* CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME */

static int install_filter(void)
{
#ifndef A3S_AUDIT_ARCH
	errno = ENOSYS;
	return -1;
#else
	/* layout: header (5), one JEQ per denied call, clone3, clone + its flags check,
	 * then the three returns ALLOW, DENY, NOSYS */
	enum { HEAD = 5, BODY = NDENIED + 4, ALLOW = HEAD + BODY, DENY = ALLOW + 1, NOSYS = ALLOW + 2 };
	struct a3s_sock_filter f[NOSYS + 1];
	size_t n = 0;
#define TO(label) ((uint8_t)((label) - (int)n - 1))
	f[n] = (struct a3s_sock_filter){LD_W_ABS, 0, 0, 4}, n++; /* arch */
	f[n] = (struct a3s_sock_filter){JEQ_K, 1, 0, A3S_AUDIT_ARCH}, n++;
	f[n] = (struct a3s_sock_filter){RET_K, 0, 0, RET_ERRNO(EPERM)}, n++;
	f[n] = (struct a3s_sock_filter){LD_W_ABS, 0, 0, 0}, n++; /* nr */
	f[n] = (struct a3s_sock_filter){JGE_K, TO(DENY), 0, 0x40000000u}, n++; /* x32 calls */
	for (size_t i = 0; i < NDENIED; i++)
		f[n] = (struct a3s_sock_filter){JEQ_K, TO(DENY), 0, (uint32_t)denied[i]}, n++;
	f[n] = (struct a3s_sock_filter){JEQ_K, TO(NOSYS), 0, 435 /* clone3: flags behind a pointer */}, n++;
	f[n] = (struct a3s_sock_filter){JEQ_K, 0, TO(ALLOW), (uint32_t)SYS_clone}, n++;
	f[n] = (struct a3s_sock_filter){LD_W_ABS, 0, 0, 16}, n++; /* clone's flags (low word) */
	f[n] = (struct a3s_sock_filter){JSET_K, TO(DENY), 0, NSFLAGS}, n++;
	f[n] = (struct a3s_sock_filter){RET_K, 0, 0, RET_ALLOW}, n++;
	f[n] = (struct a3s_sock_filter){RET_K, 0, 0, RET_ERRNO(EPERM)}, n++;
	f[n] = (struct a3s_sock_filter){RET_K, 0, 0, RET_ERRNO(ENOSYS)}, n++;
#undef TO
	struct a3s_sock_fprog prog = {(unsigned short)n, f};
	return prctl(PR_SET_SECCOMP, 2 /* SECCOMP_MODE_FILTER */, &prog, 0, 0);
#endif
}

/* --- capabilities ---------------------------------------------------------------- */
struct a3s_cap_header { uint32_t version; int pid; };
struct a3s_cap_data { uint32_t effective, permitted, inheritable; };

int contain_process(const struct contain *c)
{
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -1;
	for (int cap = 0; cap < 64; cap++)
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
			return -1;
	if (setgroups(0, NULL) < 0 || setresgid(c->gid, c->gid, c->gid) < 0 ||
	    setresuid(c->uid, c->uid, c->uid) < 0)
		return -1;
	struct a3s_cap_header h = {0x20080522 /* _LINUX_CAPABILITY_VERSION_3 */, 0};
	struct a3s_cap_data d[2];
	memset(d, 0, sizeof d);
	if (syscall(SYS_capset, &h, d) < 0)
		return -1;
	prctl(PR_CAP_AMBIENT, 4 /* PR_CAP_AMBIENT_CLEAR_ALL */, 0, 0, 0);
	return install_filter();
}
