/* The floor of the fan-out scenario: the least any server can do to deliver each event to each
 * client at once. One thread, no HTTP parsing beyond the head, no buffering, no ids: every
 * interval it formats one event (the naive app's format) and writes it with one send() per
 * client, framed as an HTTP/1.1 chunk. Its CPU is what one write per event per client costs on
 * this machine, measured beside ssegate and Nginx by bench/bench.py.
 *
 *   cc -O2 -o floor bench/floor.c && ./floor PORT INTERVAL_US PAYLOAD_BYTES
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 20000

static int clients[MAX_CLIENTS];
static int nclients;

static long long now_us(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PORT INTERVAL_US PAYLOAD_BYTES\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    long long interval = atoll(argv[2]);
    int payload = atoi(argv[3]);
    if (port <= 0 || interval <= 0 || payload < 0 || payload > 60000) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    char *pad = malloc(payload + 1);
    char *event = malloc(payload + 256);
    char *frame = malloc(payload + 300);
    if (!pad || !event || !frame) return 1;
    memset(pad, 'x', payload);
    pad[payload] = 0;

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 20000)) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);

    static const char head[] = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                               "cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
    long long seq = 0, dropped = 0;
    long long next = now_us(CLOCK_MONOTONIC) + interval;
    struct epoll_event events[256];
    for (;;) {
        long long wait = (next - now_us(CLOCK_MONOTONIC)) / 1000;
        int n = epoll_wait(ep, events, 256, wait > 0 ? (int)wait : 0);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int c;
                while ((c = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            /* A request head (or a hang-up): answer the head once, then only write. */
            char buf[4096];
            ssize_t r = read(fd, buf, sizeof buf);
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            if (r <= 0 || nclients == MAX_CLIENTS || send(fd, head, sizeof head - 1, MSG_NOSIGNAL) < 0) {
                close(fd);
                continue;
            }
            clients[nclients++] = fd;
        }
        long long t = now_us(CLOCK_MONOTONIC);
        if (t < next) continue;
        next += interval;
        if (next < t) next = t + interval;
        seq++;
        int len = snprintf(event, payload + 256,
                           "data: {\"seq\": %lld, \"sent_us\": %lld, \"pad\": \"%s\"}\n\n", seq,
                           now_us(CLOCK_REALTIME), pad);
        int flen = sprintf(frame, "%x\r\n", len);
        memcpy(frame + flen, event, len);
        memcpy(frame + flen + len, "\r\n", 2);
        flen += len + 2;
        for (int i = 0; i < nclients; i++) {
            ssize_t w = send(clients[i], frame, flen, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w == flen) continue;
            if (w < 0 && errno == EAGAIN) {
                dropped++; /* the client misses this event: the load generator counts a gap */
                continue;
            }
            /* Gone, or a partial write that would break the framing: drop the client. */
            close(clients[i]);
            clients[i--] = clients[--nclients];
        }
        if (dropped && seq % 1000 == 0) fprintf(stderr, "dropped %lld\n", dropped);
    }
}
