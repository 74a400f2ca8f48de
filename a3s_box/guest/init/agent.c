/* PREPARE and CONFIG, and the agent: namespaces, cgroups, start, restart with backoff;
 * STATUS; and what happens when a child of init dies. */
#include "server.h"

#include <sched.h>
#include <sys/mount.h>

struct agent A = {.state = "not-configured", .ahead = {.pid = 0, .report = -1, .req = -1},
		  .exec_ahead = {.pid = 0, .report = -1, .req = -1}};

void aheads_cancel(void)
{
	spawn_cancel(&A.ahead);
	spawn_cancel(&A.exec_ahead);
}

char nsx_env[600]; /* A3S_NSEXEC_SOCK=..., for agent processes */

void agent_start(void)
{
	int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
	char **env = env_merge(A.env, NULL, NULL, nsx_env);
	struct spawn_req r = {.argv = A.argv, .env = env, .workdir = A.workdir, .ns = &A.agent_ns,
			      .fd_in = nul, .fd_out = g_console, .fd_err = g_console, .setsid = 1};
	int err = 0;
	char msg[256];
	pid_t pid = -1;
	if (A.ahead.pid > 0) { /* forked at PREPARE, into these namespaces: it only execs */
		pid = spawn_finish(&A.ahead, &r, &err, msg, sizeof msg);
		if (pid < 0 && err == EPIPE)
			logmsg("agent's process forked ahead is gone: forking it now");
	}
	if (pid < 0 && (err == 0 || err == EPIPE))
		pid = spawn(&r, &err, msg, sizeof msg);
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
void agent_after_exit(int failed)
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

void agent_launch(void)
{
	agent_start();
	if (!A.pid)
		agent_after_exit(1);
}

void reaped(pid_t pid, int st)
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
	if (A.ahead.pid && pid == A.ahead.pid) { /* died before CONFIG used it */
		spawn_ahead_lost(&A.ahead, st);
		return;
	}
	if (A.exec_ahead.pid && pid == A.exec_ahead.pid) {
		spawn_ahead_lost(&A.exec_ahead, st);
		return;
	}
	if (pid == A.agent_ns.holder || pid == A.business_ns.holder) {
		struct nsset *n = pid == A.agent_ns.holder ? &A.agent_ns : &A.business_ns;
		n->holder = 0;
		if (!stopping)
			logmsg("%s namespace holder died", n == &A.agent_ns ? "agent" : "business");
		if (n == &A.agent_ns)
			aheads_cancel();
		ns_close(n);
	}
}

void reap_all(void)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
		reaped(pid, st);
}

/* Mounts made in init's namespace (volumes, at MOUNT) reach the agent's, which is
 * their slave: a namespace made before the volumes were mounted (PREPARE) sees them too.
 * Nothing propagates back. */
static unsigned share_mounts(unsigned iso)
{
	static int done;
	if (!O->pid1 || !(iso & (ISO_MOUNT | ISO_PID)))
		return iso; /* on a host (tests), its mounts are not ours to change */
	if (!done && mount(NULL, "/", NULL, MS_REC | MS_SHARED, NULL) < 0) {
		logmsg("mount propagation: %s", strerror(errno));
		return iso;
	}
	done = 1;
	return iso | ISO_FOLLOW;
}

static int cgroup_paths(char *agent, char *business, size_t len)
{
	if (!O->cgroup_root || !*O->cgroup_root)
		return 0;
	snprintf(agent, len, "%s/agent/main", O->cgroup_root);
	snprintf(business, len, "%s/agent/business", O->cgroup_root);
	return 1;
}

#define PREPARE_MAX_WARM 8
#define PREPARE_MAX_TARGETS 64

/* PREPARE, sent while a snapshot template is made: the agent's namespaces (ISO) and the
 * cgroup folders, made now so that every clone's CONFIG only names the hostname, the
 * limits and the command (under TCG making them costs a clone ~75 ms it no longer pays);
 * the building box's volume targets made; the page cache warmed with the commands
 * clones start first (warm.c). */
void on_prepare(struct conn *c, struct rd *r)
{
	unsigned iso = r_u32(r);
	char *path = r_str(r);
	char **warm = r_strlist(r);
	char **targets = r_strlist(r);
	size_t nwarm = 0, ntargets = 0;
	int bad_target = 0;
	while (warm && warm[nwarm])
		nwarm++;
	for (; targets && targets[ntargets]; ntargets++)
		bad_target |= !mount_target_ok(targets[ntargets]);
	if (r_end(r) < 0 || iso > (ISO_MOUNT | ISO_PID | ISO_IPC | ISO_UTS | ISO_NET) || nwarm > PREPARE_MAX_WARM ||
	    ntargets > PREPARE_MAX_TARGETS || bad_target) {
		send_error(c, 0, EINVAL, "bad PREPARE payload");
		goto out;
	}
	if (A.configured || A.prepared) {
		send_result(c, 0, EBUSY, "already prepared");
		goto out;
	}
	char cg_agent[512] = "", cg_bus[512] = "";
	if (cgroup_paths(cg_agent, cg_bus, sizeof cg_agent) && cgroup_make(O->cgroup_root) < 0)
		logmsg("cgroup folders incomplete under %s", O->cgroup_root);
	int rc = ns_create(&A.agent_ns, NULL, share_mounts(iso), "", cg_agent, NULL);
	if (rc < 0) {
		char m[200];
		snprintf(m, sizeof m, "agent namespaces: %s", strerror(-rc));
		send_result(c, 0, -rc, m);
		goto out;
	}
	A.prepared = 1;
	A.prepared_iso = ns_flags(iso, NULL);
	/* the agent's process and the first exec's, forked into them now: in a clone, the
	 * agent's CONFIG and the first EXEC in its namespaces only have them exec */
	struct spawn_req shape = {.ns = &A.agent_ns, .setsid = 1};
	if ((rc = spawn_ahead(&shape, &A.ahead)) < 0 || (rc = spawn_ahead(&shape, &A.exec_ahead)) < 0)
		logmsg("not forked ahead: %s", strerror(-rc));
	/* the building box's mount targets: its clones' MOUNTs find them (the template's key
	 * names them), and no clone allocates an inode and a block and journals them */
	for (size_t i = 0; i < ntargets; i++)
		if (make_dirs(targets[i]) < 0)
			logmsg("mount target %s not made: %s", targets[i], strerror(errno));
	/* warmed first: its reads overlap the settling's wait */
	char said[96];
	int at = snprintf(said, sizeof said, "warmed_kib=%llu", warm_page_cache(path, warm) >> 10);
	if (O->pid1) /* a template's guest (on a host, in tests, nothing is snapshotted) */
		snprintf(said + at, sizeof said - (size_t)at, " settled_ms=%lld", quiesce_for_snapshot());
	send_result(c, 0, 0, said);
out:
	free(path);
	strv_free(warm);
	strv_free(targets);
}

/* The hostname of a prepared UTS namespace: init steps in and back out. */
static void name_namespace(const struct nsset *ns, const char *host)
{
	static int own = -1;
	if (own < 0)
		own = open("/proc/self/ns/uts", O_RDONLY | O_CLOEXEC);
	if (own < 0 || setns(ns->fd_uts, CLONE_NEWUTS) < 0) {
		logmsg("agent hostname: %s", strerror(errno));
		return;
	}
	if (sethostname(host, strlen(host)) < 0)
		logmsg("agent hostname: %s", strerror(errno));
	if (setns(own, CLONE_NEWUTS) < 0) /* init must not stay in the agent's */
		logmsg("init's own hostname namespace: %s", strerror(errno));
}

void on_config(struct conn *c, struct rd *r)
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
	/* how business code is contained (absent from an older host: contained, as nobody) */
	struct contain con = {.on = 1, .uid = 65534, .gid = 65534, .share = NULL};
	if (r->at < r->len) {
		con.on = r_u8(r);
		con.uid = r_u32(r);
		con.gid = r_u32(r);
		con.share = r_strlist(r);
	}
	uint64_t bmem = 0; /* the business cgroup's own limits (0: none but the agent's) */
	uint32_t bpids = 0;
	if (r->at < r->len) {
		bmem = r_u64(r);
		bpids = r_u32(r);
	}
	int bad_share = 0;
	for (char **s = con.share; s && *s; s++)
		bad_share |= **s != '/';
	if (r_end(r) < 0 || restart > 2 || bad_share) {
		free(host), free(wd), strv_free(env), strv_free(argv), strv_free(con.share);
		send_error(c, 0, EINVAL, "bad CONFIG payload");
		return;
	}
	A.business_contain = con;
	A.configured = 1;
	A.hostname = host, A.env = env, A.argv = argv, A.workdir = wd;
	A.agent_iso = aiso, A.business_iso = biso, A.restart = restart;
	A.state = "starting";
	if (O->pid1 && *host)
		sethostname(host, strlen(host));
	char cg_agent[512] = "", cg_bus[512] = "";
	int adopt = A.prepared && A.agent_ns.ok && ns_flags(aiso, NULL) == A.prepared_iso;
	if (cgroup_paths(cg_agent, cg_bus, sizeof cg_agent)) {
		/* a missing controller costs the limit, not the box: cgroup_setup logs it */
		int cg = A.prepared ? cgroup_limit(O->cgroup_root, mem, pids, bmem, bpids)
				    : cgroup_setup(O->cgroup_root, mem, pids, bmem, bpids);
		if (cg < 0)
			logmsg("cgroup limits incomplete under %s", O->cgroup_root);
	}
	int rc = 0;
	if (adopt) {
		if ((aiso & ISO_UTS) && *host)
			name_namespace(&A.agent_ns, host);
	} else {
		aheads_cancel(); /* forked into namespaces this box does not use */
		if (A.prepared)
			ns_close(&A.agent_ns); /* made for other isolation flags than this box's */
		rc = ns_create(&A.agent_ns, NULL, share_mounts(aiso), host, cg_agent, NULL);
	}
	if (rc < 0) {
		A.state = "exited";
		char m[200];
		snprintf(m, sizeof m, "agent namespaces: %s", strerror(-rc));
		logmsg("%s", m);
		send_result(c, 0, -rc, m);
		return;
	}
	if (biso) {
		rc = ns_create(&A.business_ns, &A.agent_ns, biso, host, cg_bus, &A.business_contain);
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

void on_status(struct conn *c, uint32_t id)
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
