/* PUT and GET: files written atomically, paths resolved inside the namespace's root. */
#include "server.h"


/* Open `path` as seen from namespace `ns`: symlinks cannot climb out of its root. */
int ns_open(int ns, const char *path, int flags, mode_t mode, int *err, const char **why)
{
	const struct nsset *n = ns_for(ns, err, why);
	if (*err)
		return -1;
	char root[64] = "/";
	if (n)
		snprintf(root, sizeof root, "/proc/%d/root", (int)n->member);
	int rfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rfd < 0) {
		*err = errno, *why = "namespace root";
		return -1;
	}
	struct open_how_ how = {.flags = (uint64_t)flags | O_CLOEXEC, .mode = mode,
				.resolve = RESOLVE_IN_ROOT};
	int fd = (int)syscall(SYS_openat2, rfd, path, &how, sizeof how);
	if (fd < 0 && errno == ENOSYS) /* kernels before 5.6 */
		fd = openat(rfd, path[0] == '/' ? path + 1 : path, flags | O_CLOEXEC, mode);
	if (fd < 0)
		*err = errno, *why = strerror(errno);
	close(rfd);
	return fd;
}

void on_put(struct conn *c, uint32_t id, struct rd *r)
{
	int ns = r_u8(r);
	uint32_t mode = r_u32(r);
	char *path = r_str(r);
	if (r_end(r) < 0 || !*path || path[strlen(path) - 1] == '/') {
		free(path);
		send_error(c, id, EINVAL, "bad PUT payload");
		return;
	}
	int err = 0;
	const char *why = "";
	char *slash = strrchr(path, '/');
	char *dir = slash ? strndup(path, (size_t)(slash - path + 1)) : strdup(".");
	const char *base = slash ? slash + 1 : path;
	int dfd = ns_open(ns, dir, O_PATH | O_DIRECTORY, 0, &err, &why);
	free(dir);
	if (dfd < 0) {
		char m[300];
		snprintf(m, sizeof m, "%s: %s", path, why);
		send_result(c, id, err, m);
		free(path);
		return;
	}
	struct sess *s = sess_new(c, id, S_PUT);
	s->fd_dir = dfd;
	s->name = strdup(base);
	char tmp[300];
	snprintf(tmp, sizeof tmp, ".%s.a3s-put-%u", base, id);
	s->tmpname = strdup(tmp);
	s->fd_file = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (s->fd_file < 0 || fchmod(s->fd_file, mode & 07777) < 0) {
		char m[300];
		snprintf(m, sizeof m, "%s: %s", path, strerror(errno));
		send_result(c, id, errno, m);
		sess_free(s);
	}
	free(path);
}

void on_data(struct sess *s, const unsigned char *p, size_t n)
{
	if (n) {
		while (n) {
			ssize_t w = write(s->fd_file, p, n);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				char m[300];
				snprintf(m, sizeof m, "%s: %s", s->name, strerror(errno));
				send_result(s->c, s->id, errno, m);
				sess_free(s);
				return;
			}
			p += w, n -= (size_t)w;
		}
		return;
	}
	int rc = close(s->fd_file);
	s->fd_file = -1;
	if (rc == 0)
		rc = renameat(s->fd_dir, s->tmpname, s->fd_dir, s->name);
	if (rc < 0) {
		send_result(s->c, s->id, errno, strerror(errno));
	} else {
		free(s->tmpname);
		s->tmpname = NULL;
		send_result(s->c, s->id, 0, "");
	}
	sess_free(s);
}

void on_get(struct conn *c, uint32_t id, struct rd *r)
{
	int ns = r_u8(r);
	char *path = r_str(r);
	if (r_end(r) < 0 || !*path) {
		free(path);
		send_error(c, id, EINVAL, "bad GET payload");
		return;
	}
	int err = 0;
	const char *why = "";
	int fd = ns_open(ns, path, O_RDONLY, 0, &err, &why);
	struct stat st;
	if (fd >= 0 && fstat(fd, &st) == 0 && !S_ISREG(st.st_mode))
		close(fd), fd = -1, err = EISDIR, why = "not a regular file";
	if (fd < 0) {
		char m[300];
		snprintf(m, sizeof m, "%s: %s", path, why);
		send_result(c, id, err, m);
	} else {
		struct sess *s = sess_new(c, id, S_GET);
		s->fd_file = fd;
	}
	free(path);
}

void get_pump(struct sess *s)
{
	unsigned char b[CHUNK];
	ssize_t n = read(s->fd_file, b, sizeof b);
	if (n < 0 && errno == EINTR)
		return;
	if (n > 0) {
		send_frame(s->c, M_DATA, s->id, b, (size_t)n);
		return;
	}
	send_frame(s->c, M_DATA, s->id, "", 0);
	send_result(s->c, s->id, n < 0 ? errno : 0, n < 0 ? strerror(errno) : "");
	sess_free(s);
}
