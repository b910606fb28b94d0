/* Checksums and header rewrites over packet buffers. */
#include <string.h>
#include "fastpath.h"

uint16_t dk_inet_csum(const uint8_t *buf, size_t len)
{
    uint32_t sum = 0;
    size_t i;

    for (i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)buf[i] << 8 | buf[i + 1];
    if (len & 1)
        sum += (uint32_t)buf[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    sum = ~sum & 0xffff;
    /* Return the value as it must be stored: high byte first in memory. */
    {
        uint8_t out[2] = { (uint8_t)(sum >> 8), (uint8_t)sum };
        uint16_t v;
        memcpy(&v, out, sizeof v);
        return v;
    }
}

int dk_macswap_burst(uint8_t **frames, const uint32_t *lens, int n)
{
    int i, swapped = 0;
    uint8_t tmp[6];

    for (i = 0; i < n; i++) {
        if (lens[i] < 12)
            continue;
        memcpy(tmp, frames[i], 6);
        memcpy(frames[i], frames[i] + 6, 6);
        memcpy(frames[i] + 6, tmp, 6);
        swapped++;
    }
    return swapped;
}
