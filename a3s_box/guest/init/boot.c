/* What PID 1 does before it can serve: mounts, kernel modules, the root switch,
 * and finding the host channel; and the final power-off. Only used in the VM. */
#include "a3s.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

/* musl-gcc ships no kernel headers: the few vsock bits we need */
#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define VMADDR_CID_ANY (-1U)
struct sockaddr_vm {
	unsigned short svm_family, svm_reserved1;
	unsigned int svm_port, svm_cid;
	unsigned char svm_zero[4];
};

static void msleep(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static void mnt(const char *src, const char *dst, const char *type, unsigned long fl, const char *data)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, fl, data) < 0 && errno != EBUSY)
		logmsg("mount %s on %s: %s", type, dst, strerror(errno));
}

void boot_early(void)
{
	mnt("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
		g_console = fcntl(2, F_DUPFD_CLOEXEC, 3);
	}
	mnt("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mnt("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

static void opt(const char *cmdline, const char *key, char *out, size_t n)
{
	size_t kl = strlen(key);
	for (const char *p = cmdline; *p;) {
		while (*p == ' ' || *p == '\n')
			p++;
		size_t wl = strcspn(p, " \n");
		if (wl > kl && !strncmp(p, key, kl) && p[kl] == '=') {
			size_t vl = wl - kl - 1;
			if (vl >= n)
				vl = n - 1;
			memcpy(out, p + kl + 1, vl);
			out[vl] = 0;
		}
		p += wl;
	}
}

void boot_cmdline(struct bootcfg *c)
{
	char line[4096] = "", dbgv[8] = "";
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, line, sizeof line - 1);
		line[n > 0 ? n : 0] = 0;
		close(fd);
	}
	snprintf(c->root, sizeof c->root, "/dev/vda");
	snprintf(c->rootfstype, sizeof c->rootfstype, "ext4");
	snprintf(c->channel, sizeof c->channel, "virtio-serial:a3s.0");
	c->net[0] = 0;
	opt(line, "a3s.root", c->root, sizeof c->root);
	opt(line, "a3s.rootfstype", c->rootfstype, sizeof c->rootfstype);
	opt(line, "a3s.channel", c->channel, sizeof c->channel);
	opt(line, "a3s.net", c->net, sizeof c->net);
	opt(line, "a3s.debug", dbgv, sizeof dbgv);
	g_debug = dbgv[0] == '1';
}

int boot_modules(const char *dir)
{
	char p[512];
	snprintf(p, sizeof p, "%s/load", dir);
	FILE *f = fopen(p, "re");
	if (!f)
		return 0; /* no modules: a kernel with the drivers built in */
	char name[256];
	int bad = 0;
	while (fgets(name, sizeof name, f)) {
		name[strcspn(name, "\r\n")] = 0;
		if (!*name || *name == '#')
			continue;
		snprintf(p, sizeof p, "%s/%s", dir, name);
		int fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)) {
			logmsg("module %s: %s", name, strerror(errno));
			bad++;
		} else {
			dbg("module %s loaded", name);
		}
		if (fd >= 0)
			close(fd);
	}
	fclose(f);
	return bad ? -1 : 0;
}

static int copy_file(const char *from, const char *to, mode_t mode)
{
	int in = open(from, O_RDONLY | O_CLOEXEC);
	int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	char b[65536];
	ssize_t n = 0;
	while (in >= 0 && out >= 0 && (n = read(in, b, sizeof b)) > 0)
		if (write(out, b, (size_t)n) != n) {
			n = -1;
			break;
		}
	int e = errno;
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	if (in < 0 || out < 0 || n < 0) {
		logmsg("copy %s to %s: %s", from, to, strerror(e));
		return -1;
	}
	chmod(to, mode);
	return 0;
}

/* Free the initramfs's memory: delete what it holds, not crossing into other mounts. */
static void wipe(int dfd, dev_t dev)
{
	DIR *d = fdopendir(dfd);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		struct stat st;
		if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != dev)
			continue;
		if (S_ISDIR(st.st_mode)) {
			int sub = openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (sub >= 0)
				wipe(sub, dev);
			unlinkat(dfd, e->d_name, AT_REMOVEDIR);
		} else {
			unlinkat(dfd, e->d_name, 0);
		}
	}
	closedir(d);
}

static int wait_for(const char *path, int ms)
{
	struct stat st;
	for (int t = 0; t < ms; t += 10) {
		if (stat(path, &st) == 0)
			return 0;
		msleep(10);
	}
	return stat(path, &st);
}

static void install_self(const char *self, const char *dir)
{
	static const char *names[] = {"init", "nsexec", "tar", "container", "fs"};
	char p[256];
	mkdir(dir, 0755);
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		snprintf(p, sizeof p, "%s/%s", dir, names[i]);
		copy_file(self, p, 0755);
	}
}

/* The host may have given the box a bigger disk than the image's file system
 * (resources.disk): grow it online to fill the device. A no-op when it already does. */
#define A3S_BLKGETSIZE64 0x80081272UL /* _IOR(0x12, 114, size_t) */
#define A3S_EXT4_IOC_RESIZE_FS 0x40086610UL /* _IOW('f', 16, __u64) */
static void grow_root(const char *dev, const char *mnt)
{
	int d = open(dev, O_RDONLY | O_CLOEXEC);
	unsigned long long bytes = 0;
	if (d < 0 || ioctl(d, A3S_BLKGETSIZE64, &bytes) < 0) {
		if (d >= 0)
			close(d);
		return;
	}
	close(d);
	struct statfs sf;
	int m = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (m < 0)
		return;
	if (fstatfs(m, &sf) == 0 && sf.f_bsize > 0) {
		uint64_t blocks = bytes / (uint64_t)sf.f_bsize;
		/* f_blocks excludes the file system's own overhead: only try when clearly short */
		if (blocks > (uint64_t)sf.f_blocks + blocks / 20) {
			if (ioctl(m, A3S_EXT4_IOC_RESIZE_FS, &blocks) < 0)
				logmsg("grow root to %llu MiB: %s", bytes >> 20, strerror(errno));
			else
				dbg("root grown to %llu MiB", bytes >> 20);
		}
	}
	close(m);
}

int boot_switch_root(const struct bootcfg *c, const char *self)
{
	if (!strcmp(c->root, "none")) {
		/* a tmpfs: under libkrun / is the host's folder, which must not get our files */
		mkdir("/.a3s", 0755);
		if (mount("a3s", "/.a3s", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0)
			logmsg("mount /.a3s: %s", strerror(errno));
		install_self(self, "/.a3s");
		return 0;
	}
	const char *src = c->root, *type = c->rootfstype;
	if (!strncmp(c->root, "virtiofs:", 9))
		src = c->root + 9, type = "virtiofs";
	else if (wait_for(src, 10000) < 0) {
		logmsg("root device %s: %s", src, strerror(errno));
		return -1;
	}
	mkdir("/newroot", 0755);
	/* noatime: reading a file writes nothing. Under relatime each box (each clone of a
	 * template a day old) journalled and wrote back an inode per program it first ran,
	 * into its disk overlay; nothing in a box keys on when a file was last read */
	if (mount(src, "/newroot", type, MS_NOATIME, NULL) < 0) {
		logmsg("mount root %s (%s): %s", src, type, strerror(errno));
		return -1;
	}
	if (!strcmp(type, "ext4"))
		grow_root(src, "/newroot");
	static const char *points[] = {"/newroot/proc", "/newroot/sys", "/newroot/dev",
				       "/newroot/tmp", "/newroot/.a3s"};
	for (size_t i = 0; i < sizeof points / sizeof *points; i++)
		mkdir(points[i], 0755);
	chmod("/newroot/tmp", 01777);
	if (mount("a3s", "/newroot/.a3s", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0)
		logmsg("mount /.a3s: %s", strerror(errno));
	install_self(self, "/newroot/.a3s");
	static const char *moves[] = {"/dev", "/proc", "/sys"};
	char to[64];
	for (size_t i = 0; i < 3; i++) {
		snprintf(to, sizeof to, "/newroot%s", moves[i]);
		if (mount(moves[i], to, NULL, MS_MOVE, NULL) < 0)
			logmsg("move %s: %s", moves[i], strerror(errno));
	}
	struct stat st;
	int rootfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rootfd >= 0 && fstat(rootfd, &st) == 0)
		wipe(rootfd, st.st_dev);
	else if (rootfd >= 0)
		close(rootfd);
	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
	    chdir("/") < 0) {
		logmsg("switch root: %s", strerror(errno));
		return -1;
	}
	return 0;
}

void boot_late(void)
{
	mnt("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666");
	mnt("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mnt("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	lo_up();
}

/* No udev here: find the port by its name in sysfs, make the node if devtmpfs has none. */
static int open_vport(const char *name)
{
	for (int t = 0; t < 10000; t += 20) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			char p[300], v[128] = "";
			snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
			int fd = open(p, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			ssize_t n = read(fd, v, sizeof v - 1);
			close(fd);
			v[n > 0 ? n : 0] = 0;
			v[strcspn(v, "\n")] = 0;
			if (strcmp(v, name))
				continue;
			char dev[300];
			snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
			snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/dev", e->d_name);
			closedir(d);
			d = NULL;
			struct stat st;
			if (stat(dev, &st) < 0) {
				unsigned maj = 0, min = 0;
				fd = open(p, O_RDONLY | O_CLOEXEC);
				n = fd >= 0 ? read(fd, v, sizeof v - 1) : -1;
				if (fd >= 0)
					close(fd);
				v[n > 0 ? n : 0] = 0;
				if (sscanf(v, "%u:%u", &maj, &min) == 2)
					mknod(dev, S_IFCHR | 0600, makedev(maj, min));
			}
			int port = open(dev, O_RDWR | O_CLOEXEC | O_NOCTTY);
			if (port < 0)
				logmsg("open %s: %s", dev, strerror(errno));
			return port;
		}
		if (d)
			closedir(d);
		msleep(20);
	}
	logmsg("no virtio-serial port named %s", name);
	return -1;
}

int boot_open_channel(const char *spec, int *listen_fd)
{
	*listen_fd = -1;
	if (!strncmp(spec, "virtio-serial:", 14))
		return open_vport(spec + 14);
	if (!strncmp(spec, "vsock:", 6)) {
		struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
					.svm_port = (unsigned)atoi(spec + 6)};
		int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
			logmsg("vsock port %u: %s", a.svm_port, strerror(errno));
			if (s >= 0)
				close(s);
			return -1;
		}
		*listen_fd = s;
		return -1;
	}
	logmsg("unknown channel %s", spec);
	return -1;
}

void boot_poweroff(int again)
{
	sync();
	umount2("/tmp", MNT_DETACH);
	mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
	sync();
	reboot(again ? RB_AUTOBOOT : RB_POWER_OFF);
	for (;;)
		pause(); /* PID 1 must not return */
}
