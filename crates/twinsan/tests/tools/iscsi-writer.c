/*
 * iscsi-writer: a queue-depth-1 writer that behaves like an initiator through a failover, for the tests that
 * freeze, kill or cut nodes under load, and the check that reads back what it was told was written.
 *
 *   iscsi-writer write URL SECONDS FIRST-RECORD LOG
 *   iscsi-writer verify URL LOG
 *
 * write: for SECONDS, sends records FIRST-RECORD, FIRST-RECORD+1, ... one at a time, each a WRITE(16) with FUA of
 * one logical block at LBA = record % (number of blocks); the block holds "TWREC", the record and the LBA. A
 * command unanswered within 2 s, a transport error or a status other than GOOD drops the session; the writer
 * then logs in again (same initiator name and ISID: session reinstatement, as an initiator does after a
 * failover) every 100 ms until it succeeds, and goes on with the next record. It appends to LOG, one line each:
 *
 *   A RECORD LBA MS     acknowledged (GOOD) at MS milliseconds of CLOCK_MONOTONIC
 *   F RECORD LBA MS     failed or unanswered: it may or may not be on the disk
 *   C MS                logged in
 *
 * verify: reads back every LBA the log names; for each, the value must be the last acknowledged record, or a
 * later record that failed (it may have landed), or, with no acknowledged record, zero or a failed one. Prints
 * "LOST LBA expected RECORD found RECORD" for each other block and ends with "checked N lost L". Exit status:
 * 0 when nothing is lost, 1 when something is, 2 on a usage error, 3 when the login or a read failed.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "session.h"

#define INITIATOR "iqn.2025-08.local.twinsan:writer"
#define MAGIC "TWREC"

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct target {
	struct iscsi_context *iscsi;
	struct iscsi_url *url;
	uint64_t blocks;
	uint32_t block_size;
};

static void disconnect(struct target *t)
{
	if (t->url)
		iscsi_destroy_url(t->url);
	if (t->iscsi)
		iscsi_destroy_context(t->iscsi);
	t->url = NULL;
	t->iscsi = NULL;
}

/* Logs in to url and reads the capacity; 0 on success. */
static int connect_once(struct target *t, const char *url)
{
	struct scsi_task *task;
	struct scsi_readcapacity16 *rc16;

	t->iscsi = session_context("iscsi-writer", url, INITIATOR, 7, &t->url);
	if (t->iscsi == NULL)
		return -1;
	/* The writer reconnects by itself: libiscsi must not resend a command on a new session behind its back. */
	iscsi_set_noautoreconnect(t->iscsi, 1);
	iscsi_set_timeout(t->iscsi, 2);
	if (iscsi_full_connect_sync(t->iscsi, t->url->portal, t->url->lun) != 0) {
		disconnect(t);
		return -1;
	}
	task = iscsi_readcapacity16_sync(t->iscsi, t->url->lun);
	if (task == NULL || task->status != SCSI_STATUS_GOOD) {
		if (task)
			scsi_free_scsi_task(task);
		disconnect(t);
		return -1;
	}
	rc16 = scsi_datain_unmarshall(task);
	if (rc16 == NULL) {
		scsi_free_scsi_task(task);
		disconnect(t);
		return -1;
	}
	t->blocks = rc16->returned_lba + 1;
	t->block_size = rc16->block_length;
	scsi_free_scsi_task(task);
	return 0;
}

/* Logs in again every 100 ms until it works or deadline passes. */
static int connect_retrying(struct target *t, const char *url, uint64_t deadline, FILE *log)
{
	while (now_ms() < deadline) {
		if (connect_once(t, url) == 0) {
			fprintf(log, "C %llu\n", (unsigned long long)now_ms());
			fflush(log);
			return 0;
		}
		usleep(100000);
	}
	return -1;
}

static int do_write(const char *url, int seconds, uint64_t record, const char *log_path)
{
	struct target t = { 0 };
	FILE *log = fopen(log_path, "a");
	uint64_t deadline = now_ms() + (uint64_t)seconds * 1000;
	unsigned char *block;

	if (log == NULL) {
		fprintf(stderr, "iscsi-writer: %s: %s\n", log_path, strerror(errno));
		return 2;
	}
	if (connect_retrying(&t, url, deadline, log) != 0) {
		fprintf(stderr, "iscsi-writer: no login to %s within %d s\n", url, seconds);
		return 3;
	}
	block = calloc(1, t.block_size);
	if (block == NULL)
		return 3;
	while (now_ms() < deadline) {
		uint64_t lba = record % t.blocks;
		struct scsi_task *task;
		int good;

		memset(block, 0, t.block_size);
		memcpy(block, MAGIC, sizeof MAGIC - 1);
		memcpy(block + 8, &record, sizeof record);
		memcpy(block + 16, &lba, sizeof lba);
		task = iscsi_write16_sync(t.iscsi, t.url->lun, lba, block, t.block_size, t.block_size, 0, 0, 1, 0, 0);
		good = task != NULL && task->status == SCSI_STATUS_GOOD;
		fprintf(log, "%c %llu %llu %llu\n", good ? 'A' : 'F', (unsigned long long)record,
			(unsigned long long)lba, (unsigned long long)now_ms());
		fflush(log);
		if (task)
			scsi_free_scsi_task(task);
		record++;
		if (!good) {
			disconnect(&t);
			if (connect_retrying(&t, url, deadline, log) != 0)
				break;
		}
	}
	free(block);
	if (t.iscsi)
		iscsi_logout_sync(t.iscsi);
	disconnect(&t);
	fclose(log);
	return 0;
}

struct expect {
	uint64_t acked;    /* last acknowledged record + 1; 0: none */
	uint64_t *failed;  /* failed records after it */
	size_t nfailed, cap;
	int named;
};

static int do_verify(const char *url, const char *log_path)
{
	struct target t = { 0 };
	FILE *log = fopen(log_path, "r");
	char line[256];
	struct expect *e;
	uint64_t checked = 0, lost = 0;

	if (log == NULL) {
		fprintf(stderr, "iscsi-writer: %s: %s\n", log_path, strerror(errno));
		return 2;
	}
	if (connect_retrying(&t, url, now_ms() + 30000, stderr) != 0) {
		fprintf(stderr, "iscsi-writer: no login to %s\n", url);
		return 3;
	}
	e = calloc(t.blocks, sizeof *e);
	if (e == NULL)
		return 3;
	while (fgets(line, sizeof line, log)) {
		char kind;
		unsigned long long record, lba, ms;
		if (sscanf(line, "%c %llu %llu %llu", &kind, &record, &lba, &ms) != 4 || lba >= t.blocks)
			continue;
		e[lba].named = 1;
		if (kind == 'A') {
			e[lba].acked = record + 1;
			e[lba].nfailed = 0;
		} else if (kind == 'F') {
			if (e[lba].nfailed == e[lba].cap) {
				e[lba].cap = e[lba].cap ? e[lba].cap * 2 : 4;
				e[lba].failed = realloc(e[lba].failed, e[lba].cap * sizeof(uint64_t));
				if (e[lba].failed == NULL)
					return 3;
			}
			e[lba].failed[e[lba].nfailed++] = record;
		}
	}
	fclose(log);
	for (uint64_t lba = 0; lba < t.blocks; lba++) {
		struct scsi_task *task;
		uint64_t found = 0;
		int ok;

		if (!e[lba].named)
			continue;
		task = iscsi_read16_sync(t.iscsi, t.url->lun, lba, t.block_size, t.block_size, 0, 0, 0, 0, 0);
		if (task == NULL || task->status != SCSI_STATUS_GOOD || task->datain.size < 24) {
			fprintf(stderr, "iscsi-writer: reading LBA %llu failed: %s\n", (unsigned long long)lba,
				iscsi_get_error(t.iscsi));
			return 3;
		}
		if (memcmp(task->datain.data, MAGIC, sizeof MAGIC - 1) == 0)
			memcpy(&found, task->datain.data + 8, sizeof found), found++;
		scsi_free_scsi_task(task);
		ok = found == e[lba].acked;
		for (size_t i = 0; !ok && i < e[lba].nfailed; i++)
			ok = found == e[lba].failed[i] + 1;
		checked++;
		if (!ok) {
			lost++;
			printf("LOST %llu expected %lld found %lld\n", (unsigned long long)lba,
			       (long long)e[lba].acked - 1, (long long)found - 1);
		}
	}
	printf("checked %llu lost %llu\n", (unsigned long long)checked, (unsigned long long)lost);
	iscsi_logout_sync(t.iscsi);
	disconnect(&t);
	return lost ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "write") == 0)
		return do_write(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 0), argv[5]);
	if (argc == 4 && strcmp(argv[1], "verify") == 0)
		return do_verify(argv[2], argv[3]);
	fprintf(stderr, "usage: iscsi-writer write URL SECONDS FIRST-RECORD LOG | verify URL LOG\n");
	return 2;
}
