/*
 * iscsi-latency: the latency of 4 KiB writes at queue depth 1, each timed on its own (qemu-img bench only gives
 * the total), for bench/replication.
 *
 *   iscsi-latency URL COUNT PATTERN
 *
 * Logs in to URL, reads the capacity, then sends COUNT WRITE(16) commands one at a time (synchronous: the next
 * goes out when the previous one's status is in), each of 4 KiB filled with the byte PATTERN (0..255), without
 * FUA, at 4 KiB-aligned LBAs spread over the LUN by a fixed pseudo-random sequence (the same in every run). Each
 * command is timed with CLOCK_MONOTONIC from just before it is sent to its status. Prints one line:
 *
 *   writes COUNT median_us M p99_us P mean_us A min_us L max_us H
 *
 * (p99: the smallest latency that at least 99% of the writes did not exceed). Exit status: 0 when every write
 * got GOOD, 1 when one did not (the first failure is printed to stderr and nothing more is sent), 2 on a usage
 * error, 3 when the login or READ CAPACITY failed or the block size does not divide 4 KiB.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "session.h"

#define INITIATOR "iqn.2025-08.local.twinsan:latency"
#define WRITE_SIZE 4096

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int compare_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	struct iscsi_context *iscsi;
	struct iscsi_url *url;
	struct scsi_task *task;
	struct scsi_readcapacity16 *rc16;
	uint64_t blocks, slots, state = 0x9e3779b97f4a7c15u, sum = 0, *lat;
	uint32_t block_size;
	unsigned char buf[WRITE_SIZE];
	char *end;
	long count, pattern, i;

	if (argc != 4) {
		fprintf(stderr, "usage: iscsi-latency URL COUNT PATTERN\n");
		return 2;
	}
	count = strtol(argv[2], &end, 10);
	if (*end != '\0' || count < 1 || count > 100000000) {
		fprintf(stderr, "iscsi-latency: COUNT must be 1..100000000, not %s\n", argv[2]);
		return 2;
	}
	pattern = strtol(argv[3], &end, 10);
	if (*end != '\0' || pattern < 0 || pattern > 255) {
		fprintf(stderr, "iscsi-latency: PATTERN must be 0..255, not %s\n", argv[3]);
		return 2;
	}
	lat = calloc((size_t)count, sizeof *lat);
	if (lat == NULL) {
		fprintf(stderr, "iscsi-latency: no memory for %ld latencies\n", count);
		return 3;
	}
	iscsi = session_context("iscsi-latency", argv[1], INITIATOR, 11, &url);
	if (iscsi == NULL)
		return 3;
	if (iscsi_full_connect_sync(iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "iscsi-latency: login to %s failed: %s\n", argv[1], iscsi_get_error(iscsi));
		return 3;
	}
	task = iscsi_readcapacity16_sync(iscsi, url->lun);
	if (task == NULL || task->status != SCSI_STATUS_GOOD || (rc16 = scsi_datain_unmarshall(task)) == NULL) {
		fprintf(stderr, "iscsi-latency: READ CAPACITY(16) failed: %s\n", iscsi_get_error(iscsi));
		return 3;
	}
	blocks = rc16->returned_lba + 1;
	block_size = rc16->block_length;
	scsi_free_scsi_task(task);
	if (block_size == 0 || block_size > WRITE_SIZE || WRITE_SIZE % block_size != 0) {
		fprintf(stderr, "iscsi-latency: a block of %u bytes does not divide %d\n", block_size, WRITE_SIZE);
		return 3;
	}
	slots = blocks / (WRITE_SIZE / block_size);
	if (slots == 0) {
		fprintf(stderr, "iscsi-latency: the LUN is smaller than %d bytes\n", WRITE_SIZE);
		return 3;
	}
	memset(buf, (int)pattern, sizeof buf);
	for (i = 0; i < count; i++) {
		uint64_t lba, t0;

		/* xorshift64: a fixed spread of 4 KiB slots. */
		state ^= state << 13;
		state ^= state >> 7;
		state ^= state << 17;
		lba = (state % slots) * (WRITE_SIZE / block_size);
		t0 = now_ns();
		task = iscsi_write16_sync(iscsi, url->lun, lba, buf, WRITE_SIZE, block_size, 0, 0, 0, 0, 0);
		lat[i] = now_ns() - t0;
		if (task == NULL || task->status != SCSI_STATUS_GOOD) {
			fprintf(stderr, "iscsi-latency: write %ld at LBA %llu failed: %s\n", i, (unsigned long long)lba,
				task == NULL ? iscsi_get_error(iscsi) : "status not GOOD");
			return 1;
		}
		scsi_free_scsi_task(task);
		sum += lat[i];
	}
	qsort(lat, (size_t)count, sizeof *lat, compare_u64);
	{
		long p99 = (count * 99 + 99) / 100 - 1; /* ceil(0.99 * count) - 1 */
		double median = count % 2 ? lat[count / 2] : (lat[count / 2 - 1] + lat[count / 2]) / 2.0;

		printf("writes %ld median_us %.1f p99_us %.1f mean_us %.1f min_us %.1f max_us %.1f\n", count,
		       median / 1000.0, lat[p99] / 1000.0, (double)sum / count / 1000.0, lat[0] / 1000.0,
		       lat[count - 1] / 1000.0);
	}
	iscsi_logout_sync(iscsi);
	iscsi_destroy_url(url);
	iscsi_destroy_context(iscsi);
	free(lat);
	return 0;
}
