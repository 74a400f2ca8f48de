/* `/.a3s/tar L SINCE`: the root file system as a build step left it, as a pax tar on
 * stdout, for the host to diff in userspace (it never mounts a disk a guest wrote).
 *
 * The walk sees the root file system itself, not what is mounted on it (a non-recursive
 * bind of / in a mount namespace of its own): the disk's /tmp, not the init's tmpfs.
 * Entries come depth first, names in byte order, each with a pax header carrying what
 * the host compares: uid, gid, mtime and ctime (SEC.NSEC), and for a regular file whose
 * ctime is before SINCE (untouched by the step) `A3S.skipped=1` and `A3S.size=N` in
 * place of its content. Hard links after the first are type '1'; devices and fifos are
 * listed with their numbers; sockets are left out.
 *
 * The host reads this stream as hostile (the guest wrote every byte): it is only ever
 * parsed in userspace, never written to disk as it says. */
#include "a3s.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define BLK 512
#define VIEW "/.a3s/.layer-root"

static long long since_s, since_ns;

struct seen { dev_t dev; ino_t ino; char *path; };
static struct seen *links;
static size_t nlinks, caplinks;

static int wr(const void *p, size_t n)
{
	return full_write(1, p, n);
}

static int ustar(const char *name, char type, mode_t mode, unsigned long long size,
		 const char *link, unsigned maj, unsigned min)
{
	unsigned char h[BLK];
	memset(h, 0, sizeof h);
	size_t nl = strlen(name);
	memcpy(h, name, nl < 100 ? nl : 99); /* the pax path is the real one */
	octal((char *)h + 100, 8, mode & 07777);
	octal((char *)h + 108, 8, 0);
	octal((char *)h + 116, 8, 0);
	octal((char *)h + 124, 12, size);
	octal((char *)h + 136, 12, 0);
	memset(h + 148, ' ', 8);
	h[156] = (unsigned char)type;
	if (link) {
		size_t ll = strlen(link);
		memcpy(h + 157, link, ll < 100 ? ll : 99);
	}
	memcpy(h + 257, "ustar", 6);
	memcpy(h + 263, "00", 2);
	octal((char *)h + 329, 8, maj);
	octal((char *)h + 337, 8, min);
	unsigned sum = 0;
	for (int i = 0; i < BLK; i++)
		sum += h[i];
	snprintf((char *)h + 148, 8, "%06o", sum);
	return wr(h, BLK);
}

/* one pax record: "LEN key=value\n", LEN counting itself */
static int record(char **buf, size_t *len, size_t *cap, const char *key, const char *val)
{
	size_t body = strlen(key) + strlen(val) + 3; /* " ", "=", "\n" */
	size_t digits = (size_t)snprintf(NULL, 0, "%zu", body);
	size_t total = body + digits;
	if ((size_t)snprintf(NULL, 0, "%zu", total) > digits)
		total++;
	if (*len + total + 1 > *cap) {
		*cap = (*len + total + 1) * 2;
		char *b = realloc(*buf, *cap);
		if (!b)
			return -1;
		*buf = b;
	}
	*len += (size_t)snprintf(*buf + *len, *cap - *len, "%zu %s=%s\n", total, key, val);
	return 0;
}

static int entry(const char *arc, const struct stat *st, char type, unsigned long long size,
		 const char *link, int skipped)
{
	char *pax = NULL, v[64];
	size_t len = 0, cap = 0;
	int rc = record(&pax, &len, &cap, "path", arc);
	if (!rc && link)
		rc = record(&pax, &len, &cap, "linkpath", link);
	snprintf(v, sizeof v, "%u", (unsigned)st->st_uid);
	rc = rc ? rc : record(&pax, &len, &cap, "uid", v);
	snprintf(v, sizeof v, "%u", (unsigned)st->st_gid);
	rc = rc ? rc : record(&pax, &len, &cap, "gid", v);
	snprintf(v, sizeof v, "%lld.%09ld", (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
	rc = rc ? rc : record(&pax, &len, &cap, "mtime", v);
	snprintf(v, sizeof v, "%lld.%09ld", (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
	rc = rc ? rc : record(&pax, &len, &cap, "ctime", v);
	if (!rc && skipped) {
		snprintf(v, sizeof v, "%lld", (long long)st->st_size);
		rc = record(&pax, &len, &cap, "A3S.skipped", "1");
		rc = rc ? rc : record(&pax, &len, &cap, "A3S.size", v);
	}
	if (!rc && size >= 077777777777ULL) { /* past ustar's 8 GiB */
		snprintf(v, sizeof v, "%llu", size);
		rc = record(&pax, &len, &cap, "size", v);
	}
	if (!rc)
		rc = ustar("././@PaxHeader", 'x', 0644, len, NULL, 0, 0);
	if (!rc) {
		static const char zero[BLK];
		rc = wr(pax, len);
		if (!rc && len % BLK)
			rc = wr(zero, BLK - len % BLK);
	}
	free(pax);
	unsigned maj = (type == '3' || type == '4') ? major(st->st_rdev) : 0;
	unsigned min = (type == '3' || type == '4') ? minor(st->st_rdev) : 0;
	return rc ? rc : ustar(arc, type, st->st_mode, size < 077777777777ULL ? size : 0, link, maj, min);
}

static int content(int at, const char *rel, unsigned long long size)
{
	int fd = openat(at, rel, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -1;
	static char buf[1 << 16];
	unsigned long long left = size;
	while (left) {
		size_t want = left < sizeof buf ? (size_t)left : sizeof buf;
		ssize_t r = read(fd, buf, want);
		if (r <= 0) { /* shrank: keep the stream whole */
			memset(buf, 0, want);
			r = (ssize_t)want;
		}
		if (wr(buf, (size_t)r) < 0) {
			close(fd);
			return -1;
		}
		left -= (unsigned long long)r;
	}
	close(fd);
	static const char zero[BLK];
	return size % BLK ? wr(zero, BLK - size % BLK) : 0;
}

static const char *first_link(const struct stat *st, const char *arc)
{
	for (size_t i = 0; i < nlinks; i++)
		if (links[i].dev == st->st_dev && links[i].ino == st->st_ino)
			return links[i].path;
	if (nlinks == caplinks) {
		caplinks = caplinks ? caplinks * 2 : 256;
		struct seen *n = realloc(links, caplinks * sizeof *links);
		if (!n)
			return NULL;
		links = n;
	}
	links[nlinks++] = (struct seen){st->st_dev, st->st_ino, strdup(arc)};
	return NULL;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int walk(int at, const char *rel, const char *arc, dev_t root_dev)
{
	struct stat st;
	if (fstatat(at, rel, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -1;
	if (*arc) {
		if (S_ISLNK(st.st_mode)) {
			char target[4096];
			ssize_t n = readlinkat(at, rel, target, sizeof target - 1);
			if (n < 0)
				return -1;
			target[n] = 0;
			return entry(arc, &st, '2', 0, target, 0);
		}
		if (S_ISREG(st.st_mode)) {
			const char *first = st.st_nlink > 1 ? first_link(&st, arc) : NULL;
			if (first)
				return entry(arc, &st, '1', 0, first, 0);
			int untouched = st.st_ctim.tv_sec < since_s ||
					(st.st_ctim.tv_sec == since_s && st.st_ctim.tv_nsec < since_ns);
			if (untouched)
				return entry(arc, &st, '0', 0, NULL, 1);
			if (entry(arc, &st, '0', (unsigned long long)st.st_size, NULL, 0) < 0)
				return -1;
			return content(at, rel, (unsigned long long)st.st_size);
		}
		if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
			return entry(arc, &st, S_ISCHR(st.st_mode) ? '3' : '4', 0, NULL, 0);
		if (S_ISFIFO(st.st_mode))
			return entry(arc, &st, '6', 0, NULL, 0);
		if (!S_ISDIR(st.st_mode))
			return 0; /* sockets */
		if (entry(arc, &st, '5', 0, NULL, 0) < 0)
			return -1;
		if (st.st_dev != root_dev)
			return 0; /* a mount point: the root file system's own folder only */
	}
	int fd = openat(at, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int lfd = fd >= 0 ? dup(fd) : -1;
	DIR *d = lfd >= 0 ? fdopendir(lfd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	struct dirent *e;
	while (rc == 0 && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			char **more = realloc(names, cap * sizeof *names);
			if (!more) {
				rc = -1;
				break;
			}
			names = more;
		}
		if (!(names[n++] = strdup(e->d_name)))
			rc = -1;
	}
	closedir(d);
	if (rc == 0)
		qsort(names, n, sizeof *names, by_name);
	for (size_t i = 0; i < n; i++) {
		if (rc == 0 && names[i]) {
			size_t l = strlen(arc) + strlen(names[i]) + 2;
			char *child = malloc(l);
			if (!child) {
				rc = -1;
			} else {
				snprintf(child, l, "%s%s%s", arc, *arc ? "/" : "", names[i]);
				rc = walk(fd, names[i], child, root_dev);
				free(child);
			}
		}
		free(names[i]);
	}
	free(names);
	close(fd);
	return rc;
}

int layer_main(const char *since)
{
	char *end = NULL;
	since_s = strtoll(since, &end, 10);
	since_ns = end && *end == '.' ? strtol(end + 1, NULL, 10) : 0;
	if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	    (mkdir(VIEW, 0700) < 0 && errno != EEXIST) || mount("/", VIEW, NULL, MS_BIND, NULL) < 0) {
		fprintf(stderr, "tar L: a view of the root file system: %s\n", strerror(errno));
		return 1;
	}
	int root = open(VIEW, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct stat st;
	if (root < 0 || fstat(root, &st) < 0)
		return fprintf(stderr, "tar L: %s\n", strerror(errno)), 1;
	int rc = walk(root, ".", "", st.st_dev);
	static const char zero[2 * BLK];
	if (rc == 0)
		rc = wr(zero, sizeof zero);
	if (rc)
		fprintf(stderr, "tar L: %s\n", strerror(errno));
	return rc ? 1 : 0;
}
