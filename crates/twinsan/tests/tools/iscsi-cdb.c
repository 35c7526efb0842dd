/*
 * iscsi-cdb: sends raw SCSI commands through libiscsi, the real initiator the acceptance tests use, for what
 * libiscsi's own tools cannot do from a shell (persistent reservations, VPD pages as bytes). twinsan's tests
 * build the CDBs and read the answers; this program only carries them.
 *
 *   iscsi-cdb URL INITIATOR-NAME ISID-NUMBER COMMAND...
 *
 * The session logs in as INITIATOR-NAME with a "random"-type ISID whose value is ISID-NUMBER (so two runs with
 * the same name and number are the same I_T nexus). Each COMMAND is
 *
 *   CDB-HEX                 no data
 *   CDB-HEX:in=N            up to N bytes of Data-In
 *   CDB-HEX:out=DATA-HEX    Data-Out
 *
 * and gives one line on stdout:
 *
 *   status=S key=K ascq=0xQQQQ data=HEX
 *
 * (key and ascq are 0 unless S is CHECK CONDITION). Exit status: 0 when every command got a SCSI status, 2 on a
 * usage error, 3 when the login or the transport failed (message on stderr).
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "session.h"

static int hex_value(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Decodes len hex digits at s into out (room for max bytes); returns the byte count or -1. */
static int parse_hex(const char *s, size_t len, unsigned char *out, size_t max)
{
	size_t n = 0;
	if (len % 2 != 0 || len / 2 > max)
		return -1;
	for (size_t i = 0; i < len; i += 2) {
		int hi = hex_value((unsigned char)s[i]), lo = hex_value((unsigned char)s[i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[n++] = (unsigned char)(hi << 4 | lo);
	}
	return (int)n;
}

static int run_command(struct iscsi_context *iscsi, int lun, const char *spec)
{
	static unsigned char out[1 << 20];
	unsigned char cdb[SCSI_CDB_MAX_SIZE];
	const char *colon = strchr(spec, ':');
	size_t cdb_len = colon ? (size_t)(colon - spec) : strlen(spec);
	int cdb_size = parse_hex(spec, cdb_len, cdb, sizeof cdb);
	int dir = SCSI_XFER_NONE, xfer = 0, out_len = 0;
	struct iscsi_data data = { 0, NULL };
	struct scsi_task *task;

	if (cdb_size < 6) {
		fprintf(stderr, "iscsi-cdb: bad CDB in %s\n", spec);
		return 2;
	}
	if (colon && strncmp(colon + 1, "in=", 3) == 0) {
		dir = SCSI_XFER_READ;
		xfer = atoi(colon + 4);
	} else if (colon && strncmp(colon + 1, "out=", 4) == 0) {
		out_len = parse_hex(colon + 5, strlen(colon + 5), out, sizeof out);
		if (out_len < 0) {
			fprintf(stderr, "iscsi-cdb: bad Data-Out in %s\n", spec);
			return 2;
		}
		dir = SCSI_XFER_WRITE;
		xfer = out_len;
		data.size = (size_t)out_len;
		data.data = out;
	} else if (colon) {
		fprintf(stderr, "iscsi-cdb: bad transfer in %s\n", spec);
		return 2;
	}
	task = scsi_create_task(cdb_size, cdb, dir, xfer);
	if (task == NULL) {
		fprintf(stderr, "iscsi-cdb: out of memory\n");
		return 3;
	}
	if (iscsi_scsi_command_sync(iscsi, lun, task, dir == SCSI_XFER_WRITE ? &data : NULL) == NULL) {
		fprintf(stderr, "iscsi-cdb: transport error: %s\n", iscsi_get_error(iscsi));
		scsi_free_scsi_task(task);
		return 3;
	}
	printf("status=%d key=%d ascq=0x%04x data=", task->status,
	       task->status == SCSI_STATUS_CHECK_CONDITION ? (int)task->sense.key : 0,
	       task->status == SCSI_STATUS_CHECK_CONDITION ? task->sense.ascq : 0);
	for (int i = 0; i < task->datain.size; i++)
		printf("%02x", task->datain.data[i]);
	printf("\n");
	fflush(stdout);
	scsi_free_scsi_task(task);
	return 0;
}

int main(int argc, char **argv)
{
	struct iscsi_context *iscsi;
	struct iscsi_url *url;
	int rc = 0;

	if (argc < 5) {
		fprintf(stderr, "usage: iscsi-cdb URL INITIATOR-NAME ISID-NUMBER COMMAND...\n");
		return 2;
	}
	iscsi = session_context("iscsi-cdb", argv[1], argv[2], (uint32_t)strtoul(argv[3], NULL, 0), &url);
	if (iscsi == NULL)
		return 3;
	if (iscsi_full_connect_sync(iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "iscsi-cdb: login to %s failed: %s\n", argv[1], iscsi_get_error(iscsi));
		iscsi_destroy_url(url);
		iscsi_destroy_context(iscsi);
		return 3;
	}
	for (int i = 4; i < argc && rc == 0; i++)
		rc = run_command(iscsi, url->lun, argv[i]);
	iscsi_logout_sync(iscsi);
	iscsi_destroy_url(url);
	iscsi_destroy_context(iscsi);
	return rc;
}
