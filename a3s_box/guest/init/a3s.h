/* a3s-init: PID 1 of every a3s-box VM, and `nsexec` (one multi-call binary).
 * Shared declarations. The wire format is docs/guest-protocol.md. */
#ifndef A3S_H
#define A3S_H

#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PROTO_VERSION 1
#define MAX_PAYLOAD (1u << 20)
#define HDR 11

enum msg {
	M_HELLO = 0x01, M_PING = 0x02, M_PONG = 0x03, M_CONFIG = 0x04, M_SHUTDOWN = 0x05, M_MOUNT = 0x06, M_SEED = 0x07, M_PREPARE = 0x08, M_TRUST = 0x09, M_NET = 0x0A,
	M_RESULT = 0x0F, M_EXEC = 0x10, M_STARTED = 0x11, M_STDIN = 0x12, M_STDOUT = 0x13,
	M_STDERR = 0x14, M_EXIT = 0x15, M_SIGNAL = 0x16, M_RESIZE = 0x17, M_PUT = 0x20,
	M_GET = 0x21, M_DATA = 0x22, M_STATUS = 0x30, M_STATUS_REPLY = 0x31, M_ERROR = 0x7F,
};
enum ns_kind { NS_AGENT = 0, NS_BUSINESS = 1, NS_ROOT = 2 };
enum iso { ISO_MOUNT = 1, ISO_PID = 2, ISO_IPC = 4, ISO_UTS = 8, ISO_NET = 16,
	   ISO_FOLLOW = 256 /* not from the host: the new mounts a slave of init's, not private */ };
enum exit_kind { EXIT_EXITED = 0, EXIT_SIGNALED = 1, EXIT_NOT_STARTED = 2 };

/* --- growable byte buffer ------------------------------------------------ */
struct buf { unsigned char *p; size_t len, cap; };
void lo_up(void); /* spawn.c */
void buf_put(struct buf *b, const void *d, size_t n);
void buf_drop(struct buf *b, size_t n); /* remove n bytes from the front */
void buf_free(struct buf *b);
void nonblock(int fd); /* server.c */

/* --- payload writer / reader (big-endian, str = u32 len + bytes) ---------- */
void w_u8(struct buf *b, uint8_t v);
void w_u16(struct buf *b, uint16_t v);
void w_u32(struct buf *b, uint32_t v);
void w_u64(struct buf *b, uint64_t v);
void w_str(struct buf *b, const char *s, size_t n);
void w_cstr(struct buf *b, const char *s);
void w_cstrlist(struct buf *b, char *const *v); /* u32 count, then each as w_cstr */
ssize_t send_with_fds(int sock, const void *p, size_t n, const int fds[3]);
ssize_t recv_with_fds(int sock, void *p, size_t cap, int fds[3]);

struct rd { const unsigned char *p; size_t len, at; int bad; };
uint8_t r_u8(struct rd *r);
uint16_t r_u16(struct rd *r);
uint32_t r_u32(struct rd *r);
uint64_t r_u64(struct rd *r);
const unsigned char *r_take(struct rd *r, size_t n); /* N raw bytes, NULL (and bad) if short */
/* A NUL-terminated malloc'd copy; NULL (and r->bad) on short input or embedded NUL. */
char *r_str(struct rd *r);
/* A NULL-terminated malloc'd vector of strings. */
char **r_strlist(struct rd *r);
int r_end(struct rd *r); /* 0 when everything was consumed and nothing was bad */
void strv_free(char **v);

/* Append one whole frame (header + payload) to b. */
void frame_put(struct buf *b, uint8_t type, uint32_t stream, const void *payload, size_t n);

/* --- logging (to the console) --------------------------------------------- */
extern int g_console;
extern int g_debug;
void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void dbg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* --- business containment (contain.c) ----------------------------------- */
struct contain {
	int on;          /* 0: the business namespace is privileged (as before containment) */
	uid_t uid;
	gid_t gid;
	char **share;    /* agent paths the business gets writable; NULL-terminated */
};
int contain_mounts(const struct contain *c, char *why, size_t whylen);
int contain_process(const struct contain *c);

/* --- namespaces and spawning (spawn.c) ------------------------------------ */
struct nsset {
	int ok;          /* the namespaces exist */
	pid_t holder;    /* our direct child that keeps them (reaped when it dies) */
	pid_t member;    /* a process inside them, root-ns pid, for /proc/<member>/... */
	int fd_mnt, fd_ipc, fd_uts, fd_net, fd_pid; /* -1 when not separate */
	int cgroup_procs;                           /* -1 when no cgroup */
	const struct contain *contain;              /* business code: how it is contained */
};

struct spawn_req {
	char **argv;
	char **env;         /* complete environment */
	const char *workdir;
	const struct nsset *ns; /* NULL = root namespaces */
	int tty;            /* with tty: fd_in is the pty slave, used for 0/1/2 */
	int fd_in, fd_out, fd_err;
	int setsid;
};
/* Start a process; returns its pid (root ns) or -1 with *err = errno and msg filled. */
pid_t spawn(const struct spawn_req *r, int *err, char *msg, size_t msglen);
/* spawn() in two halves (spawn.c): forked into SHAPE's namespaces (ns), session
 * (setsid) and cgroup now; given the rest of a spawn_req for the same ns later */
struct ahead { pid_t pid; int report, req; const struct nsset *ns; };
int spawn_ahead(const struct spawn_req *shape, struct ahead *out); /* 0 or -errno */
pid_t spawn_finish(struct ahead *a, const struct spawn_req *r, int *err, char *msg, size_t msglen);
void spawn_cancel(struct ahead *a);
void spawn_ahead_lost(struct ahead *a, int status); /* it died unused: says why, cancels */
/* Create namespaces `flags` for a holder nested in `parent` (NULL = root). */
unsigned ns_flags(unsigned flags, const struct contain *contain); /* what ns_create makes of FLAGS */
int ns_create(struct nsset *out, const struct nsset *parent, unsigned flags,
	      const char *hostname, const char *cgroup_dir, const struct contain *contain);
void ns_close(struct nsset *ns);

/* --- cgroups (cgroup.c) ----------------------------------------------------- */
int cgroup_make(const char *root);
int cgroup_limit(const char *root, uint64_t memory_max, uint32_t pids_max, uint64_t business_memory,
		 uint32_t business_pids);
int cgroup_setup(const char *root, uint64_t memory_max, uint32_t pids_max, uint64_t business_memory,
		 uint32_t business_pids);

/* --- boot as PID 1 (boot.c) -------------------------------------------------- */
struct bootcfg {
	char root[256], rootfstype[32], channel[128], net[128];
};
void boot_cmdline(struct bootcfg *c);
void boot_early(void);
int boot_modules(const char *dir);
int boot_switch_root(const struct bootcfg *c, const char *self);
void boot_late(void);
int net_up(const char *spec);
long long quiesce_for_snapshot(void); /* quiesce.c: a template's guest, before its snapshot */
/* mount.c: mkdir -p inside the guest's root (no symlink followed); a MOUNT target's check */
int make_dirs(const char *path);
int mount_target_ok(const char *target);
/* warm.c: a template's page cache, with COMMANDS (found in PATH_ENV) and what they load; bytes read */
unsigned long long warm_page_cache(const char *path_env, char *const *commands);

/* openat2(2), which musl may not wrap: paths resolved inside a root */
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#define RESOLVE_NO_MAGICLINKS 0x02
#define RESOLVE_IN_ROOT 0x10
struct open_how_ { uint64_t flags, mode, resolve; };
int container_main(int argc, char **argv); /* container.c: /.a3s/container for pods */
int sec_flag(const char *flag, const char *value); /* secctx.c: a container's security context */
int sec_make_dev(const char *root);
int sec_mounts(void);
int sec_process(void);
int tar_main(int argc, char **argv); /* tar.c: /.a3s/tar for box cp */
int fs_main(int argc, char **argv);  /* fs.c: /.a3s/fs, stat/ls/mkdir/mv/watch/connect */
int layer_main(const char *since);   /* layer.c: /.a3s/tar L SINCE for builds */
int full_write(int fd, const void *p, size_t n);            /* tar.c, for layer.c */
void octal(char *f, size_t w, unsigned long long v);        /* ustar's octal fields */ /* net.c: a3s.net=ADDR/PREFIX,GW,DNS */
int boot_open_channel(const char *spec, int *listen_fd);
void boot_poweroff(int reboot) __attribute__((noreturn));

/* --- server (server.c) ---------------------------------------------------------- */
struct server_opts {
	int pid1;             /* really PID 1 in a VM (power off, kill(-1)) */
	int in_fd, out_fd;    /* a single stream (stdio or virtio-serial), or -1 */
	int listen_fd;        /* vsock listener, or -1 */
	int stream_reopen;    /* virtio-serial: HUP means "host gone", keep the port */
	const char *state_dir;/* holds nsexec.sock (and nsexec) */
	const char *cgroup_root; /* "" = no cgroups */
	const char *transport;
};
int server_run(const struct server_opts *o);

/* --- nsexec client (nsexec.c) ------------------------------------------------------ */
int nsexec_main(int argc, char **argv);

#define NSEXEC_MAX_MSG (256 * 1024)
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/.a3s"

#endif
