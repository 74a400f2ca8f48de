/* A template's page cache, warmed with the programs its clones start first (PREPARE):
 * the commands the host names (the building box's agent, /bin/sh), found as execvp finds
 * them (PATH), with what the kernel and the dynamic loader read to start them: a
 * script's interpreter (#!, and the command `#!/usr/bin/env CMD` names), an ELF's
 * interpreter (PT_INTERP) and the libraries it needs (DT_NEEDED, looked up in the usual
 * library folders, not in ld.so.cache), transitively; and the entries of PATH's folders
 * (names and inodes), so that looking any command up reads no disk either. A clone then
 * starts them from the memory it shares with the template instead of reading its disk:
 * under TCG its block I/O path is ~2,000 blocks translated afresh per clone (measured:
 * ~25 ms of a connected box's start to its first exec, ~5 ms more for the lookups).
 *
 * The image is hostile: every path resolves inside the root (RESOLVE_IN_ROOT, no magic
 * links); only regular files and folders on the root's own file system are read (no
 * /proc or /dev file, no FIFO to block on); at most WARM_MAX_FILES files and
 * WARM_MAX_BYTES in all, WARM_MAX_ENTRIES folder entries (looked at, never followed),
 * each file once, WARM_DEPTH interpreters deep; every ELF offset and size is checked
 * against the file before it is read. Warming is a cache and nothing else: whatever is
 * missing, malformed or over a bound stays cold, and PREPARE answers as before. */
#include "a3s.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define WARM_MAX_FILES 64
#define WARM_MAX_BYTES (64ull << 20)
#define WARM_DEPTH 4
#define WARM_MAX_ENTRIES 16384 /* PATH folders' entries, in all */
#define WARM_MAX_NEEDED 64 /* DT_NEEDED entries looked at per ELF */
#define SHEBANG_MAX 256    /* the kernel reads a #! line from the first 256 bytes (BINPRM_BUF_SIZE) */

static const char *const LIB_DIRS[] = {
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
	"/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib",
};

struct warm {
	int root;     /* the root every path resolves in */
	dev_t dev;    /* its file system: nothing else is read */
	const char *path; /* PATH, for commands without a slash */
	int files;
	unsigned long long bytes;
	struct { dev_t dev; ino_t ino; } seen[WARM_MAX_FILES];
};

static void warm_path(struct warm *w, const char *path, int depth);
static void warm_command(struct warm *w, const char *cmd, int depth);

/* PATH opened inside the root: a regular file on the root's file system, or -1. */
static int open_file(struct warm *w, const char *path, struct stat *st)
{
	struct open_how_ how = {.flags = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC,
				.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
	int fd = (int)syscall(SYS_openat2, w->root, path, &how, sizeof how);
	if (fd < 0)
		return -1;
	if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode) || st->st_dev != w->dev) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Exactly N bytes at OFF (inside the file's SIZE), or -1. */
static int read_at(int fd, off_t size, uint64_t off, void *out, size_t n)
{
	if (off > (uint64_t)size || n > (uint64_t)size - off)
		return -1;
	return pread(fd, out, n, (off_t)off) == (ssize_t)n ? 0 : -1;
}

/* The file offset of virtual address V (in a PT_LOAD segment's file part), or -1. */
static int64_t file_offset(const Elf64_Phdr *ph, int n, uint64_t v)
{
	for (int i = 0; i < n; i++)
		if (ph[i].p_type == PT_LOAD && v >= ph[i].p_vaddr && v - ph[i].p_vaddr < ph[i].p_filesz)
			return (int64_t)(ph[i].p_offset + (v - ph[i].p_vaddr));
	return -1;
}

static void warm_library(struct warm *w, const char *name, int depth)
{
	char path[512];
	if (!*name || strchr(name, '/') || strlen(name) > 255)
		return;
	for (size_t i = 0; i < sizeof LIB_DIRS / sizeof *LIB_DIRS; i++) {
		snprintf(path, sizeof path, "%s/%s", LIB_DIRS[i], name);
		struct stat st;
		int fd = open_file(w, path, &st);
		if (fd >= 0) {
			close(fd);
			warm_path(w, path, depth);
			return;
		}
	}
}

/* An ELF64 of this machine's byte order: its interpreter and the libraries it needs. */
static void warm_elf(struct warm *w, int fd, off_t size, int depth)
{
	Elf64_Ehdr eh;
	if (read_at(fd, size, 0, &eh, sizeof eh) < 0 || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB ||
	    eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > 64)
		return;
	Elf64_Phdr ph[64];
	if (read_at(fd, size, eh.e_phoff, ph, eh.e_phnum * sizeof *ph) < 0)
		return;
	int n = eh.e_phnum;
	for (int i = 0; i < n; i++) {
		if (ph[i].p_type == PT_INTERP && ph[i].p_filesz > 1 && ph[i].p_filesz <= 256) {
			char interp[257];
			if (read_at(fd, size, ph[i].p_offset, interp, ph[i].p_filesz) == 0 &&
			    interp[ph[i].p_filesz - 1] == 0 && interp[0] == '/')
				warm_path(w, interp, depth + 1);
		}
	}
	for (int i = 0; i < n; i++) {
		if (ph[i].p_type != PT_DYNAMIC)
			continue;
		Elf64_Dyn dyn[256];
		size_t count = ph[i].p_filesz / sizeof *dyn;
		if (count > sizeof dyn / sizeof *dyn)
			count = sizeof dyn / sizeof *dyn;
		if (read_at(fd, size, ph[i].p_offset, dyn, count * sizeof *dyn) < 0)
			return;
		uint64_t strtab = 0, strsz = 0, needed[WARM_MAX_NEEDED];
		int nneeded = 0;
		for (size_t j = 0; j < count && dyn[j].d_tag != DT_NULL; j++) {
			if (dyn[j].d_tag == DT_STRTAB)
				strtab = dyn[j].d_un.d_ptr;
			else if (dyn[j].d_tag == DT_STRSZ)
				strsz = dyn[j].d_un.d_val;
			else if (dyn[j].d_tag == DT_NEEDED && nneeded < WARM_MAX_NEEDED)
				needed[nneeded++] = dyn[j].d_un.d_val;
		}
		int64_t base = file_offset(ph, n, strtab);
		for (int j = 0; base >= 0 && j < nneeded; j++) {
			char name[256];
			if (needed[j] >= strsz)
				continue;
			uint64_t len = strsz - needed[j] < sizeof name ? strsz - needed[j] : sizeof name;
			uint64_t off = (uint64_t)base + needed[j];
			if (off > (uint64_t)size)
				continue;
			if (len > (uint64_t)size - off)
				len = (uint64_t)size - off;
			if (len == 0 || pread(fd, name, len, (off_t)off) != (ssize_t)len || !memchr(name, 0, len))
				continue;
			warm_library(w, name, depth + 1);
		}
		return; /* one dynamic segment */
	}
}

/* A #! line: its interpreter, and for `#!/usr/bin/env CMD` the command env runs. */
static void warm_script(struct warm *w, const char *head, size_t len, int depth)
{
	char line[SHEBANG_MAX + 1];
	size_t n = len < SHEBANG_MAX ? len : SHEBANG_MAX;
	memcpy(line, head, n);
	line[n] = 0;
	line[strcspn(line, "\n")] = 0;
	char *save = NULL, *interp = strtok_r(line + 2, " \t", &save), *arg = strtok_r(NULL, " \t", &save);
	if (!interp || interp[0] != '/')
		return;
	warm_path(w, interp, depth + 1);
	const char *base = strrchr(interp, '/') + 1;
	if (!strcmp(base, "env") && arg && arg[0] != '-')
		warm_command(w, arg, depth + 1);
}

/* PATH read whole into the page cache (within the bounds), then what starting it reads. */
static void warm_path(struct warm *w, const char *path, int depth)
{
	if (depth > WARM_DEPTH || w->files >= WARM_MAX_FILES || w->bytes >= WARM_MAX_BYTES)
		return;
	struct stat st;
	int fd = open_file(w, path, &st);
	if (fd < 0)
		return;
	for (int i = 0; i < w->files; i++)
		if (w->seen[i].dev == st.st_dev && w->seen[i].ino == st.st_ino) {
			close(fd);
			return;
		}
	w->seen[w->files].dev = st.st_dev;
	w->seen[w->files].ino = st.st_ino;
	w->files++;
	static char chunk[1 << 16];
	char head[SHEBANG_MAX];
	size_t head_len = 0;
	unsigned long long got = 0;
	for (ssize_t r; w->bytes < WARM_MAX_BYTES; got += (size_t)r, w->bytes += (size_t)r) {
		size_t want = sizeof chunk;
		if (want > WARM_MAX_BYTES - w->bytes)
			want = (size_t)(WARM_MAX_BYTES - w->bytes);
		if ((r = read(fd, chunk, want)) <= 0)
			break;
		if (!got) {
			head_len = (size_t)r < sizeof head ? (size_t)r : sizeof head;
			memcpy(head, chunk, head_len);
		}
	}
	logmsg("warmed %s (%llu KiB)", path, got >> 10);
	if (head_len >= 2 && head[0] == '#' && head[1] == '!')
		warm_script(w, head, head_len, depth);
	else if (head_len >= SELFMAG && !memcmp(head, ELFMAG, SELFMAG))
		warm_elf(w, fd, st.st_size, depth);
	close(fd);
}

/* CMD as execvp runs it: a path if it has a slash, else the first executable regular
 * file of that name in PATH's folders. */
static void warm_command(struct warm *w, const char *cmd, int depth)
{
	if (!*cmd || strlen(cmd) > 255)
		return;
	if (strchr(cmd, '/')) {
		warm_path(w, cmd, depth);
		return;
	}
	const char *p = w->path;
	while (*p) {
		size_t len = strcspn(p, ":");
		char path[4096 + 256 + 2];
		if (len && len < 4096) {
			snprintf(path, sizeof path, "%.*s/%s", (int)len, p, cmd);
			struct stat st;
			int fd = open_file(w, path, &st);
			if (fd >= 0) {
				close(fd);
				if (st.st_mode & 0111) {
					warm_path(w, path, depth);
					return;
				}
			}
		}
		p += len + (p[len] == ':');
	}
}

/* Every entry of PATH's folders looked up (fstatat, not followed): their blocks, inodes
 * and names cached, as a command's lookup would read them. */
static void warm_folders(struct warm *w)
{
	int entries = 0;
	for (const char *p = w->path; *p && entries < WARM_MAX_ENTRIES; p += strcspn(p, ":"), p += *p == ':') {
		size_t len = strcspn(p, ":");
		char folder[4096];
		if (!len || len >= sizeof folder)
			continue;
		snprintf(folder, sizeof folder, "%.*s", (int)len, p);
		struct open_how_ how = {.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC,
					.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
		int fd = (int)syscall(SYS_openat2, w->root, folder, &how, sizeof how);
		struct stat st;
		if (fd < 0)
			continue;
		DIR *d = fstat(fd, &st) == 0 && st.st_dev == w->dev ? fdopendir(fd) : NULL;
		if (!d) {
			close(fd);
			continue;
		}
		for (struct dirent *e; entries < WARM_MAX_ENTRIES && (e = readdir(d));)
			if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
				entries++, (void)fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW);
		closedir(d);
	}
	if (entries)
		logmsg("warmed %d entries of PATH's folders", entries);
}

unsigned long long warm_page_cache(const char *path_env, char *const *commands)
{
	struct warm w = {.path = path_env};
	struct stat st;
	w.root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (w.root < 0)
		return 0;
	if (fstat(w.root, &st) == 0) {
		w.dev = st.st_dev;
		for (int i = 0; commands && commands[i]; i++)
			warm_command(&w, commands[i], 0);
		warm_folders(&w);
	}
	close(w.root);
	return w.bytes;
}
