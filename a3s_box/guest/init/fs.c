/* /.a3s/fs: what the E2B-style API needs of a box's file system and ports, whatever the
 * image has (or lacks): no shell or coreutils needed.
 *   fs stat PATH         one record for PATH itself (never follows a symlink)
 *   fs ls DEPTH PATH     records for what is under folder PATH, DEPTH levels down (1 =
 *                        its entries); symlinks are listed, never followed or descended
 *   fs mkdir PATH        mkdir -p; exit 0 when it made PATH, 3 when a folder was there
 *   fs mv SRC DST        rename(2)
 *   fs watch [-r] PATH   inotify on folder PATH (-r: and every folder below, made later
 *                        too): a `ready` record, then one record per event until killed
 *   fs connect PORT      relays stdin to TCP 127.0.0.1:PORT (or [::1]) and the answer to
 *                        stdout; shuts down its sending side at the end of stdin
 * Records are fields each ended by a NUL, so a name may hold any other byte. stat and ls:
 * type (f d l o), mode (octal), size, mtime (ns), uid, gid, owner, group, path, symlink
 * target. watch: kind (create write remove rename chmod), name under PATH.
 * Failures: a message on stderr and exit 1; bad arguments and a port nobody answers on
 * exit 2. Paths must be absolute. */
#include "a3s.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define IO_BUF (1 << 16)

/* --- records on stdout: buffered, each field < IO_BUF ------------------------------- */
static char obuf[IO_BUF];
static size_t olen;

static int oflush(void)
{
	int r = olen ? full_write(1, obuf, olen) : 0;
	olen = 0;
	return r;
}

static int field(const char *s, size_t n)
{
	if (olen + n + 1 > sizeof obuf && oflush() < 0)
		return -1;
	memcpy(obuf + olen, s, n);
	obuf[olen + n] = 0;
	olen += n + 1;
	return 0;
}

static int number(long long v)
{
	char s[32];
	return field(s, (size_t)snprintf(s, sizeof s, "%lld", v));
}

static int fail(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	return 1;
}

static int usage(void)
{
	fprintf(stderr, "usage: fs stat PATH | fs ls DEPTH PATH | fs mkdir PATH | fs mv SRC DST\n"
			"       fs watch [-r] PATH | fs connect PORT\n");
	return 2;
}

/* An absolute path without trailing slashes ("/" stays), or NULL. */
static char *clean(char *p)
{
	if (p[0] != '/')
		return NULL;
	size_t n = strlen(p);
	while (n > 1 && p[n - 1] == '/')
		p[--n] = 0;
	return p;
}

/* The name of a uid or gid, from the box's own /etc/passwd and /etc/group (the number
 * when it has none); the last answer of each is kept, as a folder's entries share one. */
static const char *id_name(unsigned id, int group)
{
	static struct { int set; unsigned id; char name[256]; } last[2];
	if (last[group].set && last[group].id == id)
		return last[group].name;
	const char *n = NULL;
	if (group) {
		struct group *g = getgrgid((gid_t)id);
		n = g ? g->gr_name : NULL;
	} else {
		struct passwd *pw = getpwuid((uid_t)id);
		n = pw ? pw->pw_name : NULL;
	}
	if (n && *n)
		snprintf(last[group].name, sizeof last[group].name, "%s", n);
	else
		snprintf(last[group].name, sizeof last[group].name, "%u", id);
	last[group].set = 1, last[group].id = id;
	return last[group].name;
}

/* mtime in ns, clamped where it would not fit (after the year 2262) */
static long long mtime_ns(const struct stat *st)
{
	const long long lim = LLONG_MAX / 1000000000LL - 1;
	long long s = (long long)st->st_mtim.tv_sec;
	if (s > lim || s < -lim)
		return s > 0 ? LLONG_MAX : -LLONG_MAX;
	return s * 1000000000LL + st->st_mtim.tv_nsec;
}

/* The record of the entry REL of folder DIR (its lstat ST), named PATH. */
static int record(int dir, const char *rel, const char *path, const struct stat *st)
{
	char type = S_ISREG(st->st_mode) ? 'f' : S_ISDIR(st->st_mode) ? 'd' : S_ISLNK(st->st_mode) ? 'l' : 'o';
	char target[PATH_MAX] = "";
	ssize_t n = 0;
	if (type == 'l' && (n = readlinkat(dir, rel, target, sizeof target - 1)) < 0)
		n = 0;
	target[n] = 0;
	char mode[16];
	int ml = snprintf(mode, sizeof mode, "%o", (unsigned)(st->st_mode & 07777));
	const char *owner = id_name(st->st_uid, 0);
	if (field(&type, 1) < 0 || field(mode, (size_t)ml) < 0 || number((long long)st->st_size) < 0 ||
	    number(mtime_ns(st)) < 0 || number(st->st_uid) < 0 || number(st->st_gid) < 0 ||
	    field(owner, strlen(owner)) < 0)
		return -1;
	const char *group = id_name(st->st_gid, 1);
	if (field(group, strlen(group)) < 0 || field(path, strlen(path)) < 0 || field(target, (size_t)n) < 0)
		return -1;
	return 0;
}

static int cmd_stat(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return fail(path);
	return record(AT_FDCWD, path, path, &st) < 0 || oflush() < 0 ? 1 : 0;
}

/* The entries of folder DFD (closed here), named PATH (a PATH_MAX buffer, restored on
 * return), DEPTH levels down. What cannot be read below the top is skipped with a
 * message; only a failed write of records stops it (-1). */
static int walk(int dfd, char *path, int depth)
{
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return fprintf(stderr, "%s: %s\n", path, strerror(errno)), 0;
	}
	size_t plen = strlen(path);
	const char *sep = plen == 1 ? "" : "/";
	struct dirent *e;
	int rc = 0;
	while (rc == 0 && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		struct stat st;
		if (plen + strlen(sep) + strlen(e->d_name) >= PATH_MAX) {
			fprintf(stderr, "%s/%s: %s\n", path, e->d_name, strerror(ENAMETOOLONG));
			continue;
		}
		snprintf(path + plen, PATH_MAX - plen, "%s%s", sep, e->d_name);
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno != ENOENT) /* gone since readdir: not an entry any more */
				fprintf(stderr, "%s: %s\n", path, strerror(errno));
		} else if (record(dirfd(d), e->d_name, path, &st) < 0) {
			rc = -1;
		} else if (S_ISDIR(st.st_mode) && depth > 1) {
			int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0)
				fprintf(stderr, "%s: %s\n", path, strerror(errno));
			else
				rc = walk(sub, path, depth - 1);
		}
		path[plen] = 0;
	}
	closedir(d);
	return rc;
}

static int cmd_ls(const char *depth_arg, char *top)
{
	char *end;
	errno = 0;
	long depth = strtol(depth_arg, &end, 10);
	if (errno || *end || end == depth_arg || depth < 1 || depth > 65535)
		return usage();
	int dfd = open(top, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0) {
		if (errno == ELOOP) /* a symlink: listed by stat, never followed */
			errno = ENOTDIR;
		return fail(top);
	}
	static char path[PATH_MAX];
	snprintf(path, sizeof path, "%s", top);
	return walk(dfd, path, (int)depth) < 0 || oflush() < 0 ? 1 : 0;
}

/* mkdir -p PATH: 0 made, 3 a folder (or a symlink to one) was there, 1 failed */
static int cmd_mkdir(char *path)
{
	for (char *p = path + 1;; p++) {
		if (*p && *p != '/')
			continue;
		char c = *p;
		*p = 0;
		int made = mkdir(path, 0755) == 0;
		if (!made && errno != EEXIST) {
			int e = errno;
			*p = c;
			errno = e;
			return fail(path);
		}
		if (!c) {
			struct stat st;
			if (made)
				return 0;
			if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
				return 3;
			errno = EEXIST;
			return fail(path);
		}
		*p = c;
	}
}

static int cmd_mv(const char *src, const char *dst)
{
	if (rename(src, dst) < 0) {
		fprintf(stderr, "%s -> %s: %s\n", src, dst, strerror(errno));
		return 1;
	}
	return 0;
}

/* --- watch ------------------------------------------------------------------------------ */
#define WATCH_MASK (IN_CREATE | IN_MOVED_TO | IN_MODIFY | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | \
		    IN_ATTRIB | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
#define MAX_WATCHES 65536

static struct { int wd; char *rel; } *watches; /* rel: "" for the top folder */
static int nwatches, ino_fd, recursive;
static const char *top;

static int event(const char *kind, const char *name)
{
	if (field(kind, strlen(kind)) < 0 || field(name, strlen(name)) < 0 || oflush() < 0)
		return -1;
	return 0;
}

static int watch_index(int wd)
{
	for (int i = 0; i < nwatches; i++)
		if (watches[i].wd == wd)
			return i;
	return -1;
}

static void unwatch(int i)
{
	free(watches[i].rel);
	watches[i] = watches[--nwatches];
}

/* Watch folder REL under the top (and, with -r, every folder below it). SCAN: it is
 * new, so what it holds already was made before its watch: report that as created. */
static int watch_tree(const char *rel, int scan)
{
	static char full[PATH_MAX], sub[PATH_MAX]; /* not kept across the recursion */
	if (snprintf(full, sizeof full, "%s%s%s", top, *rel && strcmp(top, "/") ? "/" : "", rel) >= PATH_MAX)
		return fprintf(stderr, "%s/%s: %s\n", top, rel, strerror(ENAMETOOLONG)), 0;
	if (nwatches == MAX_WATCHES)
		return fprintf(stderr, "%s: more than %d folders: not watched\n", full, MAX_WATCHES), 0;
	int wd = inotify_add_watch(ino_fd, full, WATCH_MASK);
	if (wd < 0) {
		if (!*rel)
			return -2;
		return fprintf(stderr, "%s: %s\n", full, strerror(errno)), 0;
	}
	int i = watch_index(wd);
	if (i >= 0) /* a folder seen again (moved back, or bind-mounted twice) */
		unwatch(i);
	char *me = strdup(rel);
	if (!me)
		abort();
	watches[nwatches].wd = wd;
	watches[nwatches++].rel = me;
	if (!recursive)
		return 0;
	int fd = open(full, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	me = strdup(rel); /* the watch's copy may go while we recurse */
	if (!me)
		abort();
	struct dirent *e;
	int rc = 0;
	while (rc == 0 && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (snprintf(sub, sizeof sub, "%s%s%s", me, *me ? "/" : "", e->d_name) >= PATH_MAX)
			continue;
		if (scan && event("create", sub) < 0)
			rc = -1;
		struct stat st;
		if (rc == 0 && fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode))
			rc = watch_tree(sub, scan);
	}
	free(me);
	closedir(d);
	return rc;
}

/* A folder moved away: its watches and those below it go (their names are stale). */
static void unwatch_tree(const char *rel)
{
	size_t n = strlen(rel);
	for (int i = nwatches - 1; i >= 0; i--)
		if (!strncmp(watches[i].rel, rel, n) && (!watches[i].rel[n] || watches[i].rel[n] == '/')) {
			inotify_rm_watch(ino_fd, watches[i].wd);
			unwatch(i);
		}
}

static long long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* One inotify event as a record (or none); -1 when stdout failed, 1 when the top went. */
static int on_event(const struct inotify_event *ev)
{
	static char last[PATH_MAX]; /* the last write reported, to fold a burst into one */
	static long long last_at;
	if (ev->mask & IN_Q_OVERFLOW) {
		fprintf(stderr, "%s: too many events at once: some were lost\n", top);
		return 0;
	}
	int i = watch_index(ev->wd);
	if (ev->mask & IN_IGNORED) { /* its folder was removed, or unmounted */
		if (i >= 0 && !*watches[i].rel)
			return 1;
		if (i >= 0)
			unwatch(i);
		return 0;
	}
	if (i < 0 || !ev->len || !ev->name[0]) /* a folder's own events come from its parent too */
		return 0;
	char name[PATH_MAX];
	const char *rel = watches[i].rel;
	if (snprintf(name, sizeof name, "%s%s%s", rel, *rel ? "/" : "", ev->name) >= PATH_MAX)
		return 0;
	const char *kind = ev->mask & (IN_CREATE | IN_MOVED_TO) ? "create"
			 : ev->mask & (IN_MODIFY | IN_CLOSE_WRITE) ? "write"
			 : ev->mask & IN_DELETE ? "remove"
			 : ev->mask & IN_MOVED_FROM ? "rename"
			 : ev->mask & IN_ATTRIB ? "chmod" : NULL;
	if (!kind)
		return 0;
	if (*kind == 'w') {
		long long t = now_ms();
		if (!strcmp(last, name) && t - last_at < 100)
			return 0;
		snprintf(last, sizeof last, "%s", name);
		last_at = t;
	} else {
		last[0] = 0;
	}
	if (event(kind, name) < 0)
		return -1;
	if (recursive && (ev->mask & IN_ISDIR) && (ev->mask & IN_MOVED_FROM))
		unwatch_tree(name);
	if (recursive && (ev->mask & IN_ISDIR) && (ev->mask & (IN_CREATE | IN_MOVED_TO)))
		return watch_tree(name, !!(ev->mask & IN_CREATE)) < 0 ? -1 : 0; /* moved in: not new */
	return 0;
}

static int cmd_watch(const char *path, int rec)
{
	top = path, recursive = rec;
	if (!(watches = calloc(MAX_WATCHES, sizeof *watches)))
		return fail("watch");
	if ((ino_fd = inotify_init1(IN_CLOEXEC)) < 0)
		return fail("inotify");
	int rc = watch_tree("", 0);
	if (rc == -2)
		return fail(path);
	if (rc < 0 || event("ready", "") < 0)
		return errno == EPIPE ? 0 : 1;
	static char evbuf[IO_BUF] __attribute__((aligned(__alignof__(struct inotify_event))));
	for (;;) {
		/* stdout too: its POLLERR says the reader is gone, even when nothing happens */
		struct pollfd p[2] = {{.fd = ino_fd, .events = POLLIN}, {.fd = 1, .events = 0}};
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return fail("poll");
		}
		if (p[1].revents & (POLLERR | POLLHUP))
			return 0;
		if (!(p[0].revents & POLLIN))
			continue;
		ssize_t n = read(ino_fd, evbuf, sizeof evbuf);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return fail("inotify");
		for (char *at = evbuf; at < evbuf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)at;
			at += sizeof *ev + ev->len;
			int r = on_event(ev);
			if (r < 0)
				return errno == EPIPE ? 0 : 1;
			if (r > 0)
				return fprintf(stderr, "%s: the folder is gone\n", top), 1;
		}
	}
}

/* --- connect ---------------------------------------------------------------------------- */
static int dial(unsigned port)
{
	struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
				  .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	int first = 0;
	for (int i = 0; i < 2; i++) {
		int s = socket(i ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s >= 0 && connect(s, i ? (struct sockaddr *)&v6 : (struct sockaddr *)&v4,
				      i ? sizeof v6 : sizeof v4) == 0)
			return s;
		if (!first || errno == ECONNREFUSED) /* "refused" says most: nobody listens */
			first = errno;
		if (s >= 0)
			close(s);
	}
	errno = first;
	return -1;
}

/* stdin -> S, S -> stdout, each through a bounded buffer, neither side blocking the
 * other. The end: S's answer is over and written out (0), or S failed (1). */
static int relay(int s, unsigned port)
{
	static char up[IO_BUF], down[IO_BUF];
	size_t uo = 0, ul = 0, dn_o = 0, dn_l = 0;
	int in_open = 1, sock_open = 1, shut = 0, discard = 0;
	nonblock(0), nonblock(1), nonblock(s);
	for (;;) {
		if (!sock_open && !dn_l)
			return 0;
		if (!in_open && !ul && !shut) {
			shutdown(s, SHUT_WR);
			shut = 1;
		}
		short sev = (short)((sock_open && !dn_l ? POLLIN : 0) | (ul ? POLLOUT : 0));
		struct pollfd p[3] = {{.fd = in_open && !ul ? 0 : -1, .events = POLLIN},
				      {.fd = sev ? s : -1, .events = sev},
				      {.fd = dn_l ? 1 : -1, .events = POLLOUT}};
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return fail("poll");
		}
		if (p[0].revents) {
			ssize_t r = read(0, up, sizeof up);
			if (r > 0 && !discard)
				uo = 0, ul = (size_t)r;
			else if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
				in_open = 0;
		}
		if ((p[1].revents & (POLLOUT | POLLERR | POLLHUP)) && ul) {
			ssize_t w = send(s, up + uo, ul, MSG_NOSIGNAL);
			if (w > 0)
				uo += (size_t)w, ul -= (size_t)w;
			else if (w < 0 && errno != EINTR && errno != EAGAIN)
				discard = 1, ul = 0, shut = 1; /* it reads no more: its answer may go on */
		}
		if ((p[1].revents & (POLLIN | POLLERR | POLLHUP)) && sock_open && !dn_l) {
			ssize_t r = recv(s, down, sizeof down, 0);
			if (r > 0)
				dn_o = 0, dn_l = (size_t)r;
			else if (r == 0)
				sock_open = 0;
			else if (errno != EINTR && errno != EAGAIN)
				return fprintf(stderr, "connect %u: %s\n", port, strerror(errno)), 1;
		}
		if (p[2].revents && dn_l) {
			ssize_t w = write(1, down + dn_o, dn_l);
			if (w > 0)
				dn_o += (size_t)w, dn_l -= (size_t)w;
			else if (w < 0 && errno != EINTR && errno != EAGAIN)
				return 0; /* nobody reads the answer any more */
		}
	}
}

static int cmd_connect(const char *arg)
{
	char *end;
	errno = 0;
	long port = strtol(arg, &end, 10);
	if (errno || *end || end == arg || port < 1 || port > 65535)
		return usage();
	int s = dial((unsigned)port);
	if (s < 0) {
		fprintf(stderr, "connect %ld: %s\n", port, strerror(errno));
		return 2;
	}
	return relay(s, (unsigned)port);
}

int fs_main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN); /* a reader gone is EPIPE, handled where it is written */
	const char *cmd = argc > 1 ? argv[1] : "";
	if (!strcmp(cmd, "stat") && argc == 3 && clean(argv[2]))
		return cmd_stat(argv[2]);
	if (!strcmp(cmd, "ls") && argc == 4 && clean(argv[3]))
		return cmd_ls(argv[2], argv[3]);
	if (!strcmp(cmd, "mkdir") && argc == 3 && clean(argv[2]))
		return cmd_mkdir(argv[2]);
	if (!strcmp(cmd, "mv") && argc == 4 && clean(argv[2]) && clean(argv[3]))
		return cmd_mv(argv[2], argv[3]);
	if (!strcmp(cmd, "watch") && argc == 3 && clean(argv[2]))
		return cmd_watch(argv[2], 0);
	if (!strcmp(cmd, "watch") && argc == 4 && !strcmp(argv[2], "-r") && clean(argv[3]))
		return cmd_watch(argv[3], 1);
	if (!strcmp(cmd, "connect") && argc == 3)
		return cmd_connect(argv[2]);
	return usage();
}
