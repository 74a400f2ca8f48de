/* cgroup2 limits for the box's namespaces:
 *   ROOT/agent            memory.max, pids.max (the limit covers agent + business)
 *   ROOT/agent/main       agent processes
 *   ROOT/agent/business   business processes, with limits of their own below those
 *                         (business code cannot take all the agent's memory or pids)
 * Processes live only in leaves: cgroup2 forbids them in a cgroup that delegates
 * controllers to children. */
#include "a3s.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int put(const char *dir, const char *file, const char *val)
{
	char p[512];
	snprintf(p, sizeof p, "%s/%s", dir, file);
	int fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, val, strlen(val)) < 0) {
		int e = errno;
		logmsg("cgroup: %s = %s: %s", p, val, strerror(e));
		if (fd >= 0)
			close(fd);
		return -e;
	}
	close(fd);
	return 0;
}

static int mk(const char *dir)
{
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		logmsg("cgroup: mkdir %s: %s", dir, strerror(errno));
		return -errno;
	}
	return 0;
}

/* memory.max and pids.max of DIR (0: leave unlimited) */
static int limits(const char *dir, uint64_t memory_max, uint32_t pids_max)
{
	char v[32];
	int rc = 0;
	if (memory_max) {
		snprintf(v, sizeof v, "%" PRIu64, memory_max);
		rc |= put(dir, "memory.max", v);
	}
	if (pids_max) {
		snprintf(v, sizeof v, "%" PRIu32, pids_max);
		rc |= put(dir, "pids.max", v);
	}
	return rc;
}

/* The folders and the controllers they hand down, without limits: a template makes
 * them before it is snapshotted, so a clone's CONFIG only writes the limits. */
int cgroup_make(const char *root)
{
	char parent[512], agent[512], leaf[600];
	snprintf(parent, sizeof parent, "%s", root);
	char *slash = strrchr(parent, '/');
	if (!slash || slash == parent)
		return -EINVAL;
	*slash = 0;
	snprintf(agent, sizeof agent, "%s/agent", root);
	int rc = 0;
	/* controllers missing from the kernel only cost the limits, not the box */
	put(parent, "cgroup.subtree_control", "+memory +pids");
	if ((rc = mk(root)) || (rc = mk(agent)))
		return rc;
	put(root, "cgroup.subtree_control", "+memory +pids");
	snprintf(leaf, sizeof leaf, "%s/main", agent);
	mk(leaf);
	snprintf(leaf, sizeof leaf, "%s/business", agent);
	mk(leaf);
	put(agent, "cgroup.subtree_control", "+memory +pids");
	return 0;
}

int cgroup_limit(const char *root, uint64_t memory_max, uint32_t pids_max, uint64_t business_memory,
		 uint32_t business_pids)
{
	char agent[512], leaf[600];
	snprintf(agent, sizeof agent, "%s/agent", root);
	snprintf(leaf, sizeof leaf, "%s/business", agent);
	int rc = limits(agent, memory_max, pids_max);
	rc |= limits(leaf, business_memory, business_pids);
	return rc ? -EIO : 0;
}

int cgroup_setup(const char *root, uint64_t memory_max, uint32_t pids_max, uint64_t business_memory,
		 uint32_t business_pids)
{
	int rc = cgroup_make(root);
	return rc ? rc : cgroup_limit(root, memory_max, pids_max, business_memory, business_pids);
}
