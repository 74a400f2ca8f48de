/* /.a3s/tar: the guest side of `box cp`, whatever the image has (or lacks).
 *   tar c -C DIR NAME   writes NAME (a file or a whole tree) to stdout as a tar stream
 *   tar x -C DIR        extracts a tar stream from stdin into DIR
 * ustar headers with GNU long-name records ('L', 'K'); regular files, folders and
 * symlinks (never followed), modes and mtimes; streamed in blocks, so any size passes.
 * Extraction refuses absolute names and '..', and never writes through a symlink. */
#include "a3s.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define BLK 512

int full_write(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = write(fd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w, n -= (size_t)w;
	}
	return 0;
}

static int full_read(int fd, void *p, size_t n)
{
	char *c = p;
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, c + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return got ? -1 : 0; /* 0: clean end */
		got += (size_t)r;
	}
	return 1;
}

/* W-1 octal digits and a NUL, as ustar wants (layer.c too) */
void octal(char *f, size_t w, unsigned long long v)
{
	f[w - 1] = 0;
	for (size_t i = w - 1; i-- > 0; v >>= 3)
		f[i] = (char)('0' + (v & 7));
}

static int header(int out, const char *name, const char *link, char type, mode_t mode,
		  unsigned long long size, long long mtime);

/* A GNU 'L' (name) or 'K' (link) record: a header, then TEXT padded to whole blocks. */
static int long_record(int out, char type, const char *text, size_t len)
{
	if (header(out, "././@LongLink", NULL, type, 0, len + 1, 0) < 0)
		return -1;
	size_t pad = (len + 1 + BLK - 1) / BLK * BLK;
	char *b = calloc(1, pad);
	if (!b)
		return -1;
	memcpy(b, text, len);
	int r = full_write(out, b, pad);
	free(b);
	return r;
}

static int header(int out, const char *name, const char *link, char type, mode_t mode,
		  unsigned long long size, long long mtime)
{
	unsigned char h[BLK];
	size_t nl = strlen(name), ll = link ? strlen(link) : 0;
	/* GNU long name / long link records first */
	if ((nl >= 100 && long_record(out, 'L', name, nl) < 0) ||
	    (ll >= 100 && long_record(out, 'K', link, ll) < 0))
		return -1;
	memset(h, 0, sizeof h);
	memcpy(h, name, nl < 100 ? nl : 99);
	octal((char *)h + 100, 8, mode & 07777);
	octal((char *)h + 108, 8, 0);
	octal((char *)h + 116, 8, 0);
	octal((char *)h + 124, 12, size);
	octal((char *)h + 136, 12, (unsigned long long)(mtime < 0 ? 0 : mtime));
	memset(h + 148, ' ', 8);
	h[156] = (unsigned char)type;
	if (link)
		memcpy(h + 157, link, ll < 100 ? ll : 99);
	memcpy(h + 257, "ustar  ", 8); /* GNU magic: long names above */
	unsigned sum = 0;
	for (int i = 0; i < BLK; i++)
		sum += h[i];
	snprintf((char *)h + 148, 8, "%06o", sum);
	h[155] = ' ';
	return full_write(out, h, BLK);
}

static int add(int out, int at, const char *rel, const char *arc)
{
	struct stat st;
	if (fstatat(at, rel, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		fprintf(stderr, "%s: %s\n", arc, strerror(errno));
		return -1;
	}
	if (S_ISLNK(st.st_mode)) {
		char target[4096];
		ssize_t n = readlinkat(at, rel, target, sizeof target - 1);
		if (n < 0)
			return -1;
		target[n] = 0;
		return header(out, arc, target, '2', st.st_mode, 0, st.st_mtime);
	}
	if (S_ISDIR(st.st_mode)) {
		char name[4200];
		snprintf(name, sizeof name, "%s/", arc);
		if (header(out, name, NULL, '5', st.st_mode, 0, st.st_mtime) < 0)
			return -1;
		int fd = openat(at, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
		if (!d)
			return -1;
		struct dirent *e;
		int rc = 0;
		while (rc == 0 && (e = readdir(d))) {
			if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
				continue;
			char child[4200];
			snprintf(child, sizeof child, "%s/%s", arc, e->d_name);
			rc = add(out, dirfd(d), e->d_name, child);
		}
		closedir(d);
		return rc;
	}
	if (!S_ISREG(st.st_mode))
		return 0; /* devices, sockets, fifos: not copied */
	int fd = openat(at, rel, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "%s: %s\n", arc, strerror(errno));
		return -1;
	}
	if (header(out, arc, NULL, '0', st.st_mode, (unsigned long long)st.st_size, st.st_mtime) < 0) {
		close(fd);
		return -1;
	}
	static char buf[1 << 16];
	unsigned long long left = (unsigned long long)st.st_size;
	while (left) {
		size_t want = left < sizeof buf ? (size_t)left : sizeof buf;
		ssize_t r = read(fd, buf, want);
		if (r <= 0) { /* the file shrank: pad with zeros to keep the stream whole */
			memset(buf, 0, want);
			r = (ssize_t)want;
		}
		if (full_write(out, buf, (size_t)r) < 0) {
			close(fd);
			return -1;
		}
		left -= (unsigned long long)r;
	}
	close(fd);
	size_t pad = (size_t)((BLK - st.st_size % BLK) % BLK);
	memset(buf, 0, BLK);
	return pad ? full_write(out, buf, pad) : 0;
}

static unsigned long long from_octal(const unsigned char *f, size_t w)
{
	unsigned long long v = 0;
	for (size_t i = 0; i < w && f[i]; i++)
		if (f[i] >= '0' && f[i] <= '7')
			v = v * 8 + (unsigned)(f[i] - '0');
	return v;
}

/* Open the parent folder of NAME under ROOT, one component at a time, never following
 * a symlink; returns its fd and the last component. */
static int open_parent(int root, char *name, char **leaf)
{
	int fd = dup(root);
	char *save = NULL, *part = strtok_r(name, "/", &save), *next;
	while (part && (next = strtok_r(NULL, "/", &save))) {
		if (!strcmp(part, "..")) {
			close(fd);
			return errno = EPERM, -1;
		}
		if (strcmp(part, ".")) {
			mkdirat(fd, part, 0755);
			int sub = openat(fd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			close(fd);
			if (sub < 0)
				return -1;
			fd = sub;
		}
		part = next;
	}
	if (!part || !strcmp(part, "..")) {
		close(fd);
		return errno = part ? EPERM : EINVAL, -1;
	}
	*leaf = part;
	return fd;
}

static int skip(int in, unsigned long long n)
{
	static char buf[BLK];
	for (unsigned long long b = (n + BLK - 1) / BLK; b; b--)
		if (full_read(in, buf, BLK) != 1)
			return -1;
	return 0;
}

#define MAX_DIRS 65536
static struct { char *name; long long mtime; } dirs[MAX_DIRS];
static int ndirs;

static void fix_dir_times(int root)
{
	for (int i = ndirs - 1; i >= 0; i--) {
		char *leaf = NULL;
		size_t l = strlen(dirs[i].name);
		while (l && dirs[i].name[l - 1] == '/')
			dirs[i].name[--l] = 0;
		int dfd = open_parent(root, dirs[i].name, &leaf);
		if (dfd >= 0) {
			struct timespec ts[2] = {{.tv_sec = dirs[i].mtime}, {.tv_sec = dirs[i].mtime}};
			utimensat(dfd, leaf, ts, AT_SYMLINK_NOFOLLOW);
			close(dfd);
		}
		free(dirs[i].name);
	}
	ndirs = 0;
}

static int extract_stream(int in, int root);

static int extract(int in, int root)
{
	int rc = extract_stream(in, root);
	fix_dir_times(root);
	return rc;
}

static int extract_stream(int in, int root)
{
	unsigned char h[BLK];
	char *longname = NULL, *longlink = NULL;
	int zeros = 0;
	for (;;) {
		int r = full_read(in, h, BLK);
		if (r == 0)
			return 0;
		if (r < 0)
			return fprintf(stderr, "tar: truncated stream\n"), -1;
		int allzero = 1;
		for (int i = 0; i < BLK && allzero; i++)
			allzero = !h[i];
		if (allzero) {
			if (++zeros == 2)
				return 0;
			continue;
		}
		zeros = 0;
		unsigned long long size = from_octal(h + 124, 12);
		char type = (char)(h[156] ? h[156] : '0');
		if (type == 'L' || type == 'K') {
			char *s = calloc(1, size + 1);
			size_t pad = (size_t)((size + BLK - 1) / BLK * BLK);
			char *b = malloc(pad ? pad : 1);
			if (!s || !b || (pad && full_read(in, b, pad) != 1))
				return fprintf(stderr, "tar: truncated long name\n"), -1;
			memcpy(s, b, size);
			free(b);
			if (type == 'L')
				free(longname), longname = s;
			else
				free(longlink), longlink = s;
			continue;
		}
		char name[300] = "", link[101] = "";
		if (!longname) {
			char prefix[156] = "";
			memcpy(prefix, h + 345, 155);
			if (!memcmp(h + 257, "ustar\0", 6) && prefix[0])
				snprintf(name, sizeof name, "%s/%.100s", prefix, (char *)h);
			else
				memcpy(name, h, 100);
		}
		memcpy(link, h + 157, 100);
		char *path = strdup(longname ? longname : name);
		const char *target = longlink ? longlink : link;
		mode_t mode = (mode_t)from_octal(h + 100, 8) & 07777;
		long long mtime = (long long)from_octal(h + 136, 12);
		while (path[0] == '/')
			memmove(path, path + 1, strlen(path));
		size_t pl = strlen(path);
		while (pl && path[pl - 1] == '/')
			path[--pl] = 0;
		int rc = 0;
		char *leaf = NULL;
		int dfd = pl ? open_parent(root, path, &leaf) : -1;
		if (!pl) {
			rc = skip(in, type == '0' || type == '7' ? size : 0);
		} else if (dfd < 0) {
			fprintf(stderr, "tar: %s: %s\n", longname ? longname : name, strerror(errno));
			rc = -1;
		} else if (type == '5') {
			if (mkdirat(dfd, leaf, mode | 0700) < 0 && errno != EEXIST)
				rc = -1;
			else
				fchmodat(dfd, leaf, mode, 0);
		} else if (type == '2') {
			unlinkat(dfd, leaf, 0);
			rc = symlinkat(target, dfd, leaf);
		} else if (type == '0' || type == '7') {
			char tmp[300];
			snprintf(tmp, sizeof tmp, ".a3s-cp.%d.%.200s", (int)getpid(), leaf);
			int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
			static char buf[1 << 16];
			unsigned long long left = size;
			while (fd >= 0 && left) {
				size_t blocks = (size_t)((left + BLK - 1) / BLK);
				size_t want = blocks * BLK < sizeof buf ? blocks * BLK : sizeof buf;
				if (full_read(in, buf, want) != 1) {
					fprintf(stderr, "tar: truncated file %s\n", leaf);
					close(fd), unlinkat(dfd, tmp, 0);
					close(dfd);
					return -1;
				}
				size_t use = left < want ? (size_t)left : want;
				if (full_write(fd, buf, use) < 0) {
					fprintf(stderr, "tar: %s: %s\n", leaf, strerror(errno));
					close(fd), unlinkat(dfd, tmp, 0);
					close(dfd);
					return -1;
				}
				left -= use;
			}
			if (fd < 0 || fchmod(fd, mode) < 0 || close(fd) < 0 || renameat(dfd, tmp, dfd, leaf) < 0) {
				fprintf(stderr, "tar: %s: %s\n", leaf, strerror(errno));
				unlinkat(dfd, tmp, 0);
				rc = -1;
			}
		} else {
			rc = skip(in, size); /* hard links, devices: not extracted */
		}
		if (rc == 0 && dfd >= 0 && pl) {
			struct timespec ts[2] = {{.tv_sec = mtime}, {.tv_sec = mtime}};
			utimensat(dfd, leaf, ts, AT_SYMLINK_NOFOLLOW);
			if (type == '5' && ndirs < MAX_DIRS) { /* again at the end: children touch it */
				dirs[ndirs].name = strdup(longname ? longname : name);
				dirs[ndirs++].mtime = mtime;
			}
		}
		if (dfd >= 0)
			close(dfd);
		free(path);
		free(longname), longname = NULL;
		free(longlink), longlink = NULL;
		if (rc < 0) {
			if (errno)
				fprintf(stderr, "tar: %s\n", strerror(errno));
			return -1;
		}
	}
}

/* l: one line per entry of NAME (itself if not a folder): type mode size mtime name */
static int list(int dir, const char *name)
{
	struct stat st;
	if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return fprintf(stderr, "%s: %s\n", name, strerror(errno)), 1;
	if (!S_ISDIR(st.st_mode)) {
		printf("%c\t%o\t%lld\t%lld\t%s\n", S_ISLNK(st.st_mode) ? 'l' : S_ISREG(st.st_mode) ? 'f' : 'o',
		       (unsigned)(st.st_mode & 07777), (long long)st.st_size, (long long)st.st_mtime, name);
		return 0;
	}
	int fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d)
		return fprintf(stderr, "%s: %s\n", name, strerror(errno)), 1;
	printf("d\t%o\t%lld\t%lld\t.\n", (unsigned)(st.st_mode & 07777), (long long)st.st_size,
	       (long long)st.st_mtime); /* the folder itself first */
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
		    fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		printf("%c\t%o\t%lld\t%lld\t%s\n",
		       S_ISDIR(st.st_mode) ? 'd' : S_ISLNK(st.st_mode) ? 'l' : S_ISREG(st.st_mode) ? 'f' : 'o',
		       (unsigned)(st.st_mode & 07777), (long long)st.st_size, (long long)st.st_mtime, e->d_name);
	}
	closedir(d);
	return 0;
}

/* r: remove NAME and everything under it, never following a symlink */
static int remove_tree(int dir, const char *name)
{
	struct stat st;
	if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -1;
	if (S_ISDIR(st.st_mode)) {
		int fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
		if (!d)
			return -1;
		struct dirent *e;
		while ((e = readdir(d)))
			if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && remove_tree(dirfd(d), e->d_name) < 0) {
				closedir(d);
				return -1;
			}
		closedir(d);
		return unlinkat(dir, name, AT_REMOVEDIR);
	}
	return unlinkat(dir, name, 0);
}

int tar_main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "L"))
		return layer_main(argv[2]); /* layer.c: the root file system for a build's diff */
	char m = argc > 1 ? argv[1][0] : 0;
	if (argc < 4 || strcmp(argv[2], "-C") || (m != 'x' && argc != 5) || (m == 'x' && argc != 4) ||
	    !strchr("cxlr", m) || !m) {
		fprintf(stderr, "usage: tar c|l|r -C DIR NAME | tar x -C DIR\n");
		return 2;
	}
	int dir = open(argv[3], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		fprintf(stderr, "%s: %s\n", argv[3], strerror(errno));
		return 1;
	}
	if (m == 'l')
		return list(dir, argv[4]);
	if (m == 'r') {
		if (remove_tree(dir, argv[4]) < 0)
			return fprintf(stderr, "%s: %s\n", argv[4], strerror(errno)), 1;
		return 0;
	}
	if (m == 'c') {
		static char zero[2 * BLK];
		int rc = add(1, dir, argv[4], argv[4]);
		if (rc == 0)
			rc = full_write(1, zero, sizeof zero);
		return rc ? 1 : 0;
	}
	return extract(0, dir) ? 1 : 0;
}
