/*
 * session.h: what each tool of this folder does before it logs in. Each tool is built alone from its one .c file
 * (tests/common/scsi.rs), so this is a header of static functions, included after the libiscsi headers.
 */
#ifndef TWINSAN_TEST_SESSION_H
#define TWINSAN_TEST_SESSION_H

/*
 * A libiscsi context for a normal session of INITIATOR to the target of URL_TEXT (parsed into *URL), with a
 * "random"-type ISID of value ISID and header digest None or CRC32C. A URL that does not parse is a usage error:
 * the message goes to stderr and the tool exits 2. NULL (with a message) when no context can be made.
 */
static struct iscsi_context *session_context(const char *tool, const char *url_text, const char *initiator,
					     uint32_t isid, struct iscsi_url **url)
{
	struct iscsi_context *iscsi = iscsi_create_context(initiator);

	if (iscsi == NULL) {
		fprintf(stderr, "%s: cannot create a context\n", tool);
		return NULL;
	}
	*url = iscsi_parse_full_url(iscsi, url_text);
	if (*url == NULL) {
		fprintf(stderr, "%s: bad URL %s: %s\n", tool, url_text, iscsi_get_error(iscsi));
		exit(2);
	}
	iscsi_set_isid_random(iscsi, isid, 0);
	iscsi_set_targetname(iscsi, (*url)->target);
	iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
	return iscsi;
}

#endif
