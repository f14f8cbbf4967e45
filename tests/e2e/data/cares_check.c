/* A small program linked against the c-ares built by tests/e2e/test_cares.py:
   it builds a DNS query, writes it in wire format, parses it back and prints
   what it read, all offline. */
#include <ares.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    ares_dns_record_t *query = NULL, *parsed = NULL;
    unsigned char *wire = NULL;
    size_t length = 0;
    const char *name = NULL;
    ares_dns_rec_type_t type;
    ares_dns_class_t class_;
    if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS
        || ares_dns_record_create(&query, 0x1234, ARES_FLAG_RD, ARES_OPCODE_QUERY, ARES_RCODE_NOERROR)
               != ARES_SUCCESS
        || ares_dns_record_query_add(query, "farm.example.org", ARES_REC_TYPE_AAAA, ARES_CLASS_IN) != ARES_SUCCESS
        || ares_dns_write(query, &wire, &length) != ARES_SUCCESS
        || ares_dns_parse(wire, length, 0, &parsed) != ARES_SUCCESS
        || ares_dns_record_query_get(parsed, 0, &name, &type, &class_) != ARES_SUCCESS) {
        fprintf(stderr, "c-ares failed\n");
        return 1;
    }
    printf("c-ares %s: %s %s %s id %u, %zu bytes\n", ares_version(NULL), name, ares_dns_rec_type_tostr(type),
           ares_dns_class_tostr(class_), ares_dns_record_get_id(parsed), length);
    ares_free_string(wire);
    ares_dns_record_destroy(query);
    ares_dns_record_destroy(parsed);
    ares_library_cleanup();
    return 0;
}
