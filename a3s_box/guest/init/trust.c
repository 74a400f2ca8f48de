/* TRUST: the box's CA (its egress proxy signs what it intercepts with it) into the guest's
 * root before the agent exists: alone at CERT, with the image's trust store at BUNDLE, and
 * appended to the store itself where the image has one. Done here rather than as a GET and
 * two PUTs from the host: the store (~200 KiB) crossed the channel three times.
 * The image is not trusted: the store is read only if it is a regular file of at most
 * STORE_MAX bytes (no FIFO to block on, no endless file), every path resolves inside the
 * root (ns_open: an image's symlinked store is followed there, never out of it), and each
 * file is written to a temporary name and renamed into place (as PUT did). */
#include "server.h"

#include <sys/stat.h>

#define STORE_MAX (16u << 20)

/* PATH's contents, or NULL with *missing set when it does not exist (errno otherwise). */
static char *read_store(const char *path, size_t *len, int *missing)
{
	int err = 0;
	const char *why = "";
	*missing = 0;
	int fd = ns_open(NS_ROOT, path, O_RDONLY | O_NONBLOCK, 0, &err, &why);
	if (fd < 0) {
		*missing = err == ENOENT;
		errno = err;
		return NULL;
	}
	struct stat st;
	int e = fstat(fd, &st) < 0 ? errno : !S_ISREG(st.st_mode) ? EINVAL : (uint64_t)st.st_size > STORE_MAX ? EFBIG : 0;
	char *data = e ? NULL : malloc((size_t)st.st_size + 1);
	if (!data) {
		close(fd);
		errno = e ? e : ENOMEM;
		return NULL;
	}
	size_t got = 0;
	for (ssize_t n; got < (size_t)st.st_size; got += (size_t)n)
		if ((n = read(fd, data + got, (size_t)st.st_size - got)) <= 0)
			break; /* shrank meanwhile: what was read */
	close(fd);
	*len = got;
	return data;
}

static int write_all(int fd, const char *p, size_t n)
{
	for (ssize_t w; n; p += w, n -= (size_t)w)
		if ((w = write(fd, p, n)) < 0 && errno != EINTR)
			return -1;
		else if (w < 0)
			w = 0;
	return 0;
}

/* PATH := the parts, atomically (a temporary name in its folder, renamed). */
static int write_parts(const char *path, const char *a, size_t alen, const char *b, size_t blen)
{
	int err = 0;
	const char *why = "";
	const char *slash = strrchr(path, '/');
	if (!slash || !slash[1])
		return errno = EINVAL, -1;
	char dir[512], tmp[300];
	if ((size_t)(slash - path) + 2 > sizeof dir || strlen(slash + 1) + 16 > sizeof tmp)
		return errno = ENAMETOOLONG, -1;
	snprintf(dir, sizeof dir, "%.*s/", (int)(slash - path), path);
	int dfd = ns_open(NS_ROOT, dir, O_PATH | O_DIRECTORY, 0, &err, &why);
	if (dfd < 0)
		return errno = err, -1;
	snprintf(tmp, sizeof tmp, ".%s.a3s-trust", slash + 1);
	int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	int ok = fd >= 0 && fchmod(fd, 0644) == 0 && write_all(fd, a, alen) == 0 && write_all(fd, b, blen) == 0;
	int e = errno;
	if (fd >= 0)
		close(fd);
	if (ok && renameat(dfd, tmp, dfd, slash + 1) < 0)
		ok = 0, e = errno;
	if (!ok)
		unlinkat(dfd, tmp, 0);
	close(dfd);
	return ok ? 0 : (errno = e, -1);
}

void on_trust(struct conn *c, struct rd *r)
{
	char *ca = r_str(r), *cert = r_str(r), *bundle = r_str(r), *store = r_str(r);
	char msg[600];
	if (r_end(r) < 0 || !*ca || cert[0] != '/' || bundle[0] != '/' || store[0] != '/') {
		send_result(c, 0, EINVAL, "bad TRUST payload");
		goto out;
	}
	if (A.configured) {
		send_result(c, 0, EBUSY, "the CA is installed before CONFIG");
		goto out;
	}
	size_t ca_len = strlen(ca), old_len = 0;
	int missing = 0;
	char *old = read_store(store, &old_len, &missing);
	if (!old && !missing) {
		snprintf(msg, sizeof msg, "%s: %s", store, strerror(errno));
		send_result(c, 0, errno, msg);
		goto out;
	}
	while (old_len && old[old_len - 1] == '\n')
		old_len--;
	if (old_len)
		old[old_len++] = '\n'; /* its last certificate, then the CA on a line of its own */
	const char *failed = NULL;
	if (write_parts(cert, ca, ca_len, "", 0) < 0)
		failed = cert;
	else if (write_parts(bundle, old ? old : "", old_len, ca, ca_len) < 0)
		failed = bundle;
	else if (old && write_parts(store, old, old_len, ca, ca_len) < 0)
		failed = store;
	if (failed) {
		snprintf(msg, sizeof msg, "%s: %s", failed, strerror(errno));
		send_result(c, 0, errno, msg);
	} else {
		send_result(c, 0, 0, "");
	}
	free(old);
out:
	free(ca), free(cert), free(bundle), free(store);
}
