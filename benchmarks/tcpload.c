/* tcpload: a closed-loop load generator for CoAP over TCP (RFC 8323), for benchmarks/tcp_throughput.py.
 *
 * Opens C connections to HOST:PORT (loopback only), sends each an empty CSM first (RFC 8323 §5.3), then
 * keeps W GET requests in flight spread over the connections, each with a fresh 8-byte token, and matches
 * responses by token. Requests are written in batches per wake-up; responses are read and parsed as
 * RFC 8323 §3.2 frames (Len/TKL nibble, extended length, code, token, options, payload). Signalling
 * messages (7.xx) from the server are skipped. Runs a warm-up, then measures for D seconds, and prints one
 * JSON object: req/s, p50/p99 latency (ms), errors.
 *
 *   cc -O2 -o tcpload tcpload.c
 *   ./tcpload [-c connections] [-w window] [-d seconds] [-W warmup] [-p path] HOST PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256
#define MAX_WINDOW 4096
#define BUF 262144
#define HIST_US 1000000 /* latency histogram in microseconds, up to 1 s */

struct conn {
    int fd;
    uint8_t in[BUF];
    size_t have;
    uint8_t out[BUF];
    size_t out_len;
    int inflight;
};

struct slot {
    uint64_t token;
    uint64_t sent_ns;
    int conn;
    int busy;
};

static struct conn conns[MAX_CONNS];
static struct slot slots[MAX_WINDOW];
static uint32_t hist[HIST_US + 1];
static int nconn = 4, window = 16;
static double duration = 5.0, warmup = 1.0;
static const char *path = "";
static int measuring;
static uint64_t ok, errors, bad, unmatched, measured_since, measured_until;
static uint64_t token_counter;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* Append one request (TCP framing) for the slot's token to the connection's output buffer. */
static void queue_request(struct conn *c, uint64_t token) {
    uint8_t body[512];
    size_t n = 0;
    /* options: Uri-Path segments (11) */
    const char *p = path;
    int last = 0;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len) {
            int delta = 11 - last;
            last = 11;
            if (len < 13) {
                body[n++] = (uint8_t)(delta << 4 | len);
            } else {
                body[n++] = (uint8_t)(delta << 4 | 13);
                body[n++] = (uint8_t)(len - 13);
            }
            memcpy(body + n, p, len);
            n += len;
        }
        if (!slash) break;
        p = slash + 1;
    }
    uint8_t *o = c->out + c->out_len;
    size_t k = 0;
    if (n < 13) {
        o[k++] = (uint8_t)(n << 4 | 8);
    } else if (n < 269) {
        o[k++] = (uint8_t)(13 << 4 | 8);
        o[k++] = (uint8_t)(n - 13);
    } else {
        o[k++] = (uint8_t)(14 << 4 | 8);
        o[k++] = (uint8_t)((n - 269) >> 8);
        o[k++] = (uint8_t)((n - 269) & 0xff);
    }
    o[k++] = 0x01; /* GET */
    memcpy(o + k, &token, 8);
    k += 8;
    memcpy(o + k, body, n);
    k += n;
    c->out_len += k;
}

static void issue(int s, uint64_t t) {
    int ci = s % nconn;
    struct conn *c = &conns[ci];
    slots[s].token = ++token_counter ^ 0x5a5a5a5a00000000ull;
    slots[s].sent_ns = t;
    slots[s].conn = ci;
    slots[s].busy = 1;
    c->inflight++;
    queue_request(c, slots[s].token);
}

static void flush(struct conn *c) {
    size_t off = 0;
    while (off < c->out_len) {
        ssize_t w = send(c->fd, c->out + off, c->out_len - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) break;
            die("send");
        }
        off += (size_t)w;
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
}

static void complete(struct conn *c, const uint8_t *token, int tkl, int code, uint64_t t) {
    if (code >= 0xE0) return; /* signalling (CSM, Pong, ...) */
    if (tkl != 8) {
        unmatched++;
        return;
    }
    uint64_t tok;
    memcpy(&tok, token, 8);
    int s = (int)((tok ^ 0x5a5a5a5a00000000ull) - 1) % window; /* tokens are issued in slot order... */
    int found = -1;
    for (int i = 0; i < window; i++) { /* ...but reissue order differs: search from the guess */
        int j = (s + i) % window;
        if (slots[j].busy && slots[j].token == tok) {
            found = j;
            break;
        }
    }
    if (found < 0) {
        unmatched++;
        return;
    }
    slots[found].busy = 0;
    c->inflight--;
    if (measuring == 1) {
        if (code >> 5 == 2) ok++; else errors++;
        uint64_t us = (t - slots[found].sent_ns) / 1000;
        hist[us > HIST_US ? HIST_US : us]++;
    }
    if (measuring < 2) issue(found, t);
}

/* Parse whole frames from the connection's input buffer. */
static void parse(struct conn *c, uint64_t t) {
    size_t pos = 0;
    while (c->have - pos >= 2) {
        const uint8_t *d = c->in + pos;
        int len = d[0] >> 4, tkl = d[0] & 15;
        size_t hdr = 1, body;
        if (len < 13) body = (size_t)len;
        else if (len == 13) { if (c->have - pos < 2) break; body = 13 + d[1]; hdr = 2; }
        else if (len == 14) { if (c->have - pos < 3) break; body = 269 + ((size_t)d[1] << 8 | d[2]); hdr = 3; }
        else { if (c->have - pos < 5) break; body = 65805 + ((size_t)d[1] << 24 | (size_t)d[2] << 16 | (size_t)d[3] << 8 | d[4]); hdr = 5; }
        size_t total = hdr + 1 + (size_t)tkl + body;
        if (total > BUF) { bad++; c->have = 0; return; }
        if (c->have - pos < total) break;
        complete(c, d + hdr + 1, tkl, d[hdr], t);
        pos += total;
    }
    memmove(c->in, c->in + pos, c->have - pos);
    c->have -= pos;
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "c:w:d:W:p:")) != -1) {
        switch (opt) {
        case 'c': nconn = atoi(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'W': warmup = atof(optarg); break;
        case 'p': path = optarg; break;
        default: fprintf(stderr, "usage: tcpload [-c conns] [-w window] [-d s] [-W s] [-p path] HOST PORT\n"); return 2;
        }
    }
    if (optind + 2 != argc || nconn < 1 || nconn > MAX_CONNS || window < 1 || window > MAX_WINDOW) {
        fprintf(stderr, "usage: tcpload [-c conns] [-w window] [-d s] [-W s] [-p path] HOST PORT\n");
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[optind + 1]))};
    if (inet_pton(AF_INET, argv[optind], &addr.sin_addr) != 1 || (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "tcpload: HOST must be an IPv4 loopback address\n");
        return 2;
    }
    int ep = epoll_create1(0);
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, O_NONBLOCK);
        conns[i].fd = fd;
        conns[i].out[conns[i].out_len++] = 0x00; /* empty CSM: Len 0, TKL 0 */
        conns[i].out[conns[i].out_len++] = 0xE1; /* 7.01 */
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    uint64_t start = now_ns();
    for (int s = 0; s < window; s++) issue(s, start);
    for (int i = 0; i < nconn; i++) flush(&conns[i]);
    uint64_t warm_end = start + (uint64_t)(warmup * 1e9), end = warm_end + (uint64_t)(duration * 1e9);
    struct epoll_event evs[MAX_CONNS];
    for (;;) {
        uint64_t t = now_ns();
        if (measuring == 0 && t >= warm_end) { measuring = 1; measured_since = t; }
        if (measuring == 1 && t >= end) { measuring = 2; measured_until = t; }
        if (measuring == 2) {
            int busy = 0;
            for (int s = 0; s < window; s++) busy |= slots[s].busy;
            if (!busy || t >= end + 2000000000ull) break;
        }
        int n = epoll_wait(ep, evs, MAX_CONNS, 100);
        t = now_ns();
        for (int k = 0; k < n; k++) {
            struct conn *c = &conns[evs[k].data.u32];
            for (;;) {
                ssize_t r = recv(c->fd, c->in + c->have, BUF - c->have, 0);
                if (r < 0) { if (errno == EAGAIN) break; die("recv"); }
                if (r == 0) { fprintf(stderr, "tcpload: the server closed a connection\n"); return 1; }
                c->have += (size_t)r;
                parse(c, t);
            }
        }
        for (int i = 0; i < nconn; i++) if (conns[i].out_len) flush(&conns[i]);
    }
    double secs = (double)(measured_until - measured_since) / 1e9;
    uint64_t count = 0, total = 0;
    for (int i = 0; i <= HIST_US; i++) total += hist[i];
    double p50 = 0, p99 = 0;
    for (int i = 0; i <= HIST_US; i++) {
        count += hist[i];
        if (!p50 && count >= total / 2) p50 = i / 1000.0;
        if (!p99 && count >= total * 99 / 100) { p99 = i / 1000.0; break; }
    }
    printf("{\"requests_per_second\": %.1f, \"ok\": %llu, \"errors\": %llu, \"unmatched\": %llu, "
           "\"bad\": %llu, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"seconds\": %.3f, \"connections\": %d, "
           "\"window\": %d}\n",
           (ok + errors) / secs, (unsigned long long)ok, (unsigned long long)errors,
           (unsigned long long)unmatched, (unsigned long long)bad, p50, p99, secs, nconn, window);
    return 0;
}
