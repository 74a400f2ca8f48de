/* Internals of the protocol server, shared by its parts:
 *   server.c      the poll loop, connections, frame parsing and dispatch, shutdown
 *   session.c     exec sessions: spawning, stdio pumping, exit reporting
 *   agent.c       CONFIG, the agent and its restart policy, STATUS, reaping
 *   files.c       PUT and GET
 *   nsexec_srv.c  the nsexec socket
 * Single-threaded: these globals are only touched from the loop. */
#ifndef A3S_SERVER_H
#define A3S_SERVER_H

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

struct agent {
	int configured;
	char *hostname, *workdir;
	char **env, **argv;
	unsigned agent_iso, business_iso;
	int restart;
	struct nsset agent_ns, business_ns;
	/* PREPARE made agent_ns (with these isolation flags) and the cgroup folders, and
	 * forked into them ahead the agent's process and the first exec's (spawn_ahead;
	 * pid 0 once used or gone) */
	int prepared;
	unsigned prepared_iso;
	struct ahead ahead, exec_ahead;
	struct contain business_contain;
	const char *state;
	pid_t pid;
	int restarts;
	char last_exit[48];
	long long next_start, started_at;
	int backoff_ms;
};

extern const struct server_opts *O;
extern struct conn *conns[64];
extern int nconns;
extern struct sess **sess;
extern int nsess, capsess;
extern int sigfd, nsx_listen;
extern long long t0;
extern int stopping;
extern struct agent A;
void aheads_cancel(void); /* both let go: their namespaces are not the agent's */
extern char nsx_env[600];

#define send_result(c, s, e, m) send_errno_msg(c, M_RESULT, s, e, m)
#define send_error(c, s, e, m) send_errno_msg(c, M_ERROR, s, e, m)

long long now_ms(void);
void flush_conn(struct conn *c);
void send_frame(struct conn *c, uint8_t type, uint32_t stream, const void *p, size_t n);
void send_errno_msg(struct conn *c, uint8_t type, uint32_t stream, int err, const char *msg);
void exit_payload(struct buf *b, int kind, int value, const char *msg);
struct sess *sess_new(struct conn *c, uint32_t id, enum skind kind);
struct sess *sess_find(struct conn *c, uint32_t id);
void closefd(int *fd);
void sess_free(struct sess *s);
void sess_kill(struct sess *s);
int pump_out(struct sess *s, int *fd, uint8_t type, int drain);
void sess_exited(struct sess *s);
char **env_merge(char **a, char **b, char **c, const char *extra);
const struct nsset *ns_for(int ns, int *err, const char **why);
void agent_start(void);
void on_prepare(struct conn *c, struct rd *r);
void on_trust(struct conn *c, struct rd *r); /* trust.c */
void on_net(struct conn *c, struct rd *r);   /* net.c */
void agent_after_exit(int failed);
void agent_launch(void);
void reaped(pid_t pid, int st);
void reap_all(void);
void on_hello(struct conn *c, uint32_t id, struct rd *r);
void on_config(struct conn *c, struct rd *r);
void on_mount(struct conn *c, struct rd *r); /* mount.c */
void on_seed(struct conn *c, struct rd *r); /* seed.c */
void on_exec(struct conn *c, uint32_t id, struct rd *r);
int ns_open(int ns, const char *path, int flags, mode_t mode, int *err, const char **why);
void on_put(struct conn *c, uint32_t id, struct rd *r);
void on_data(struct sess *s, const unsigned char *p, size_t n);
void on_get(struct conn *c, uint32_t id, struct rd *r);
void get_pump(struct sess *s);
void on_status(struct conn *c, uint32_t id);
void dispatch(struct conn *c, int type, uint32_t id, const unsigned char *p, size_t n);
void parse_frames(struct conn *c);
struct conn *conn_add(int in, int out, int reopen);
void conn_lost(struct conn *c);
void nsexec_listen(void);
void nsexec_reply(int sock, int kind, int value, const char *msg);
void nsexec_accept(void);
void nsexec_input(struct sess *s);
void kill_ours(int sig);
void wait_children(int ms);
void do_shutdown(int reboot_after);

#endif
