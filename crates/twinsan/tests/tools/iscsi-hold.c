/*
 * iscsi-hold: holds one iSCSI session open through libiscsi and runs commands on it when told, so a test can see
 * what an existing session is told when the target changes under it (a LUN added or removed by a config reload).
 *
 *   iscsi-hold URL INITIATOR-NAME ISID-NUMBER
 *
 * Logs in (a "random"-type ISID whose value is ISID-NUMBER) to the target of URL, prints "ready", then reads
 * commands from stdin, one a line, and answers each with one line on stdout:
 *
 *   tur LUN        TEST UNIT READY to LUN:  status=S key=K asc=0xAA ascq=0xQQ
 *   luns           REPORT LUNS (to the URL's LUN): status=S luns=A,B,...
 *
 * (key, asc and ascq are 0 unless S is CHECK CONDITION.) Ends at EOF or "quit", logging out. Exit status: 0 at
 * EOF, 2 on a usage error, 3 when the login or the transport failed (message on stderr).
 *
 * While it waits for a command it keeps servicing the session (the target's NOP-In pings are answered), and it
 * never reconnects: a session the target dropped is an error here, not a silent new login, so what a command
 * sees is what the one session held from the start sees.
 */
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "session.h"

static int tur(struct iscsi_context *iscsi, int lun)
{
	struct scsi_task *task = iscsi_testunitready_sync(iscsi, lun);
	if (task == NULL) {
		fprintf(stderr, "iscsi-hold: transport error: %s\n", iscsi_get_error(iscsi));
		return 3;
	}
	int check = task->status == SCSI_STATUS_CHECK_CONDITION;
	printf("status=%d key=%d asc=0x%02x ascq=0x%02x\n", task->status, check ? (int)task->sense.key : 0,
	       check ? (task->sense.ascq >> 8) & 0xff : 0, check ? task->sense.ascq & 0xff : 0);
	fflush(stdout);
	scsi_free_scsi_task(task);
	return 0;
}

static int report_luns(struct iscsi_context *iscsi)
{
	struct scsi_task *task = iscsi_reportluns_sync(iscsi, 0, 4096);
	if (task == NULL) {
		fprintf(stderr, "iscsi-hold: transport error: %s\n", iscsi_get_error(iscsi));
		return 3;
	}
	printf("status=%d luns=", task->status);
	if (task->status == SCSI_STATUS_GOOD) {
		struct scsi_reportluns_list *list = scsi_datain_unmarshall(task);
		for (uint32_t i = 0; list != NULL && i < list->num; i++)
			printf("%s%u", i ? "," : "", (unsigned)list->luns[i]);
	}
	printf("\n");
	fflush(stdout);
	scsi_free_scsi_task(task);
	return 0;
}

int main(int argc, char **argv)
{
	struct iscsi_context *iscsi;
	struct iscsi_url *url;
	char line[256];
	int rc = 0;

	if (argc != 4) {
		fprintf(stderr, "usage: iscsi-hold URL INITIATOR-NAME ISID-NUMBER\n");
		return 2;
	}
	iscsi = session_context("iscsi-hold", argv[1], argv[2], (uint32_t)strtoul(argv[3], NULL, 0), &url);
	if (iscsi == NULL)
		return 3;
	if (iscsi_full_connect_sync(iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "iscsi-hold: login to %s failed: %s\n", argv[1], iscsi_get_error(iscsi));
		iscsi_destroy_url(url);
		iscsi_destroy_context(iscsi);
		return 3;
	}
	iscsi_set_noautoreconnect(iscsi, 1);
	/* Unbuffered: poll(2) on fd 0 must see every line the test has not yet been answered about. */
	setvbuf(stdin, NULL, _IONBF, 0);
	printf("ready\n");
	fflush(stdout);
	while (rc == 0) {
		struct pollfd fds[2] = {
			{ .fd = 0, .events = POLLIN },
			{ .fd = iscsi_get_fd(iscsi), .events = (short)iscsi_which_events(iscsi) },
		};
		int lun;
		if (poll(fds, 2, 1000) < 0) {
			perror("iscsi-hold: poll");
			rc = 3;
			break;
		}
		if (fds[1].revents != 0 || fds[1].events == 0) {
			if (iscsi_service(iscsi, fds[1].revents) < 0) {
				fprintf(stderr, "iscsi-hold: the session failed: %s\n", iscsi_get_error(iscsi));
				rc = 3;
				break;
			}
		}
		if ((fds[0].revents & (POLLIN | POLLHUP)) == 0)
			continue;
		if (fgets(line, sizeof line, stdin) == NULL)
			break;
		if (strncmp(line, "quit", 4) == 0)
			break;
		if (sscanf(line, "tur %d", &lun) == 1) {
			rc = tur(iscsi, lun);
		} else if (strncmp(line, "luns", 4) == 0) {
			rc = report_luns(iscsi);
		} else {
			fprintf(stderr, "iscsi-hold: unknown command: %s", line);
			rc = 2;
		}
	}
	iscsi_logout_sync(iscsi);
	iscsi_destroy_url(url);
	iscsi_destroy_context(iscsi);
	return rc;
}
