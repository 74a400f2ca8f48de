/* MOUNT: the box's volumes, mounted in the guest's root before the agent exists (its
 * namespaces copy them). The host decides what each is; the kernel enforces the rest
 * (a read-only bind is also read-only on the host side, where the guest cannot reach). */
#include "server.h"

#include <sys/mount.h>
#include <sys/stat.h>

#define MOUNT_READ_ONLY 1u
/* The source is a device the host is hot-plugging (a snapshot clone's virtio-fs share):
 * until the guest's PCI hotplug has probed it the mount finds no such tag (EINVAL, or
 * ENODEV/ENOENT for a disk). Bounded: a source that never comes fails as it would now. */
#define MOUNT_WAIT_SOURCE 2u
#define MOUNT_WAIT_MS 10000

/* mkdir -p inside the guest's root, refusing to follow a symlink the image put there. */
int make_dirs(const char *path)
{
	char buf[4096];
	if (strlen(path) >= sizeof buf)
		return errno = ENAMETOOLONG, -1;
	snprintf(buf, sizeof buf, "%s", path);
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || *p == 0) {
			char was = *p;
			*p = 0;
			struct stat st;
			if (lstat(buf, &st) == 0) {
				if (!S_ISDIR(st.st_mode))
					return errno = ENOTDIR, -1;
			} else if (mkdir(buf, 0755) < 0 && errno != EEXIST) {
				return -1;
			}
			*p = was;
			if (!was)
				return 0;
		}
	}
}

int mount_target_ok(const char *target)
{
	return target && target[0] == '/' && !strstr(target, "/..");
}

static int mount_waiting(const char *source, const char *target, const char *fstype,
			 unsigned long flags, const char *data, int wait)
{
	long long deadline = wait ? now_ms() + MOUNT_WAIT_MS : 0;
	for (;;) {
		if (mount(source, target, fstype, flags, data) == 0)
			return 0;
		int e = errno;
		if (!wait || now_ms() >= deadline || (e != EINVAL && e != ENODEV && e != ENOENT))
			return errno = e, -1;
		struct timespec ms = {0, 1000000};
		nanosleep(&ms, NULL);
	}
}

void on_mount(struct conn *c, struct rd *r)
{
	char *fstype = r_str(r), *source = r_str(r), *target = r_str(r);
	uint32_t flags = r_u32(r);
	char *data = r_str(r);
	char msg[600];
	if (r_end(r) < 0 || !mount_target_ok(target)) {
		send_result(c, 0, EINVAL, "bad MOUNT payload");
	} else if (A.configured) {
		send_result(c, 0, EBUSY, "volumes are mounted before CONFIG");
	} else if (make_dirs(target) < 0) {
		snprintf(msg, sizeof msg, "mkdir %s: %s", target, strerror(errno));
		send_result(c, 0, errno, msg);
	} else if (mount_waiting(source, target, fstype,
				 MS_NOSUID | MS_NODEV | ((flags & MOUNT_READ_ONLY) ? MS_RDONLY : 0),
				 *data ? data : NULL, flags & MOUNT_WAIT_SOURCE) < 0) {
		int e = errno;
		snprintf(msg, sizeof msg, "mount %s %s on %s: %s", fstype, source, target, strerror(e));
		send_result(c, 0, e, msg);
	} else {
		logmsg("mounted %s %s on %s%s", fstype, source, target,
		       (flags & MOUNT_READ_ONLY) ? " (read-only)" : "");
		send_result(c, 0, 0, "");
	}
	free(fstype), free(source), free(target), free(data);
}
