/* dpdkeni native fast path: the C side of dpdkeni.fastpath.
 *
 * Functions return 0 or a count on success and -errno on failure; Python decides policy.
 * The block between the CDEF markers is read by native/build_ffi.py as the cffi cdef.
 */
#ifndef DPDKENI_FASTPATH_H
#define DPDKENI_FASTPATH_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
/* Internet checksum (RFC 1071) of len bytes, returned in network byte order as stored in a header. */
uint16_t dk_inet_csum(const uint8_t *buf, size_t len);
/* Swap destination and source MAC of each of n frames (frames[i] points at an Ethernet header,
 * lens[i] its length); frames shorter than 12 bytes are left alone. Returns the number swapped. */
int dk_macswap_burst(uint8_t **frames, const uint32_t *lens, int n);
/* CDEF-END */

#endif
