/* SEED: fresh entropy and the time from the host, before any agent exists. A cold TCG
 * guest's CRNG is still uninitialized seconds after boot (getrandom() blocks), and a VM
 * restored from a snapshot shares its RNG state with every other clone until reseeded:
 * RNDADDENTROPY credits the host's bytes, RNDRESEEDCRNG makes the CRNG use them now. The
 * reply carries fresh random bytes, so the host can check that clones differ. */
#include "server.h"

#include <sys/ioctl.h>
#include <sys/random.h>
#include <time.h>

#define SEED_MAX 256
/* <linux/random.h>, which musl's headers do not carry */
#ifndef RNDADDENTROPY
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#endif
#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

void on_seed(struct conn *c, struct rd *r)
{
	uint32_t n = r_u32(r);
	const unsigned char *bytes = n <= SEED_MAX ? r_take(r, n) : NULL;
	uint64_t now_ns = r_u64(r);
	if (r_end(r) < 0 || !bytes || n < 32) {
		send_result(c, 0, EINVAL, "bad SEED payload");
		return;
	}
	struct {
		int entropy_count, buf_size;
		unsigned char buf[SEED_MAX];
	} e = {.entropy_count = (int)n * 8, .buf_size = (int)n};
	memcpy(e.buf, bytes, n);
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	int err = 0;
	if (fd < 0 || ioctl(fd, RNDADDENTROPY, &e) < 0)
		err = errno;
	else if (ioctl(fd, RNDRESEEDCRNG) < 0)
		err = errno; /* kernels before 4.17: the added entropy still counts */
	if (fd >= 0)
		close(fd);
	memset(&e, 0, sizeof e);
	if (now_ns) {
		struct timespec ts = {.tv_sec = (time_t)(now_ns / 1000000000ull),
				      .tv_nsec = (long)(now_ns % 1000000000ull)};
		clock_settime(CLOCK_REALTIME, &ts);
	}
	unsigned char fresh[16];
	char hex[40] = "";
	if (getrandom(fresh, sizeof fresh, GRND_NONBLOCK) == (ssize_t)sizeof fresh)
		for (int i = 0; i < 16; i++)
			snprintf(hex + 2 * i, 3, "%02x", fresh[i]);
	char msg[96];
	snprintf(msg, sizeof msg, "random=%s", hex);
	send_result(c, 0, err == ENOTTY ? 0 : err, msg);
}
