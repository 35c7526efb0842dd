/*
 * iscsi-capacity: one session kept open across an online resize.
 *
 *   iscsi-capacity URL
 *
 * Logs in, sends TEST UNIT READY and READ CAPACITY (16), prints "before BLOCKS", then waits for a line on stdin
 * (the test resizes the volume meanwhile). Then, in the same session, sends TEST UNIT READY until one is GOOD (at
 * most 5), printing "sense KEY ASC ASCQ" (hex) for every CHECK CONDITION, then READ CAPACITY (16) and prints
 * "after BLOCKS". Exit status: 0 done, 2 usage, 3 login or transport error, 4 an unexpected status.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "session.h"

#define INITIATOR "iqn.2025-08.local.twinsan:capacity"

static struct iscsi_context *iscsi;
static struct iscsi_url *url;

/* TEST UNIT READY: 0 GOOD, 1 CHECK CONDITION (sense printed), -1 otherwise. */
static int test_unit_ready(void)
{
	struct scsi_task *task = iscsi_testunitready_sync(iscsi, url->lun);
	int rc;

	if (task == NULL) {
		fprintf(stderr, "iscsi-capacity: transport error: %s\n", iscsi_get_error(iscsi));
		exit(3);
	}
	if (task->status == SCSI_STATUS_GOOD) {
		rc = 0;
	} else if (task->status == SCSI_STATUS_CHECK_CONDITION) {
		printf("sense %02x %02x %02x\n", (unsigned)task->sense.key, (unsigned)(task->sense.ascq >> 8),
		       (unsigned)(task->sense.ascq & 0xff));
		rc = 1;
	} else {
		fprintf(stderr, "iscsi-capacity: TEST UNIT READY status %d\n", task->status);
		rc = -1;
	}
	fflush(stdout);
	scsi_free_scsi_task(task);
	return rc;
}

static uint64_t read_capacity(void)
{
	struct scsi_task *task = iscsi_readcapacity16_sync(iscsi, url->lun);
	struct scsi_readcapacity16 *rc16;
	uint64_t blocks;

	if (task == NULL) {
		fprintf(stderr, "iscsi-capacity: transport error: %s\n", iscsi_get_error(iscsi));
		exit(3);
	}
	if (task->status != SCSI_STATUS_GOOD) {
		fprintf(stderr, "iscsi-capacity: READ CAPACITY (16) status %d\n", task->status);
		exit(4);
	}
	rc16 = scsi_datain_unmarshall(task);
	if (rc16 == NULL) {
		fprintf(stderr, "iscsi-capacity: cannot unmarshall READ CAPACITY (16)\n");
		exit(4);
	}
	blocks = rc16->returned_lba + 1;
	scsi_free_scsi_task(task);
	return blocks;
}

int main(int argc, char **argv)
{
	char line[64];
	int tries;

	if (argc != 2) {
		fprintf(stderr, "usage: iscsi-capacity URL\n");
		return 2;
	}
	iscsi = session_context("iscsi-capacity", argv[1], INITIATOR, 9, &url);
	if (iscsi == NULL)
		return 3;
	/* A reconnect would be a new login: the point is the one session. */
	iscsi_set_noautoreconnect(iscsi, 1);
	if (iscsi_full_connect_sync(iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "iscsi-capacity: login to %s failed: %s\n", argv[1], iscsi_get_error(iscsi));
		return 3;
	}
	for (tries = 0; tries < 5 && test_unit_ready() != 0; tries++)
		;
	printf("before %llu\n", (unsigned long long)read_capacity());
	fflush(stdout);
	if (fgets(line, sizeof(line), stdin) == NULL) {
		fprintf(stderr, "iscsi-capacity: stdin closed before the go-ahead\n");
		return 2;
	}
	for (tries = 0; tries < 5; tries++) {
		int rc = test_unit_ready();
		if (rc == 0)
			break;
		if (rc < 0)
			return 4;
	}
	printf("after %llu\n", (unsigned long long)read_capacity());
	fflush(stdout);
	iscsi_logout_sync(iscsi);
	iscsi_destroy_url(url);
	iscsi_destroy_context(iscsi);
	return 0;
}
