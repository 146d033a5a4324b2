// hopfloor: how fast a request can make a round trip through a chain of
// processes on this machine when the processes do no work at all.
//
// A token of PAYLOAD bytes goes from the first process down a chain of unix
// socketpairs to the last and back, ITERS times, with blocking reads and
// writes. Two processes are an NBD client and its server (nbdkit); three are
// an NBD client, dst attach and dst serve. The result bounds any QD1 figure
// for that shape from above: real software only adds work to it.
//
// usage: hopfloor [-t] PROCESSES ITERS PAYLOAD [STAGE...]   (PROCESSES 2..8)
//
// With -t the last link of the chain is a TCP connection over loopback
// (TCP_NODELAY) instead of a unix socketpair, as between dst attach and
// dst serve, or nbdkit's nbd plugin and nbdkit-tls.
//
// Each STAGE, if given, replaces the C loop of the next process down the
// chain (the second, then the third...) with a command run by /bin/sh,
// its socket toward the first process on fd 3 and the one toward the last
// on fd 4 (none for the last); "-" keeps the C loop. scripts/gofloor is
// such a stage: the same chain with Go in the middle, to see what Go's
// runtime adds to each hop. scripts/bench --floor builds both and runs
// them.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void xfer(int fd, char *b, int n, int reading)
{
	for (int done = 0; done < n;) {
		ssize_t k = reading ? read(fd, b + done, n - done) : write(fd, b + done, n - done);
		if (k <= 0)
			_exit(1); // the chain is being torn down
		done += k;
	}
}

// tcppair connects two sockets over loopback TCP, as socketpair would.
static int tcppair(int sv[2])
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof a;
	int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
	    getsockname(l, (struct sockaddr *)&a, &alen) != 0)
		return -1;
	sv[0] = socket(AF_INET, SOCK_STREAM, 0);
	if (sv[0] < 0 || connect(sv[0], (struct sockaddr *)&a, sizeof a) != 0)
		return -1;
	sv[1] = accept(l, NULL, NULL);
	close(l);
	if (sv[1] < 0)
		return -1;
	setsockopt(sv[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	setsockopt(sv[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return 0;
}

int main(int argc, char **argv)
{
	int tcp = argc > 1 && strcmp(argv[1], "-t") == 0;
	if (tcp) {
		argc--;
		argv++;
	}
	if (argc < 4) {
		fprintf(stderr, "usage: hopfloor [-t] PROCESSES ITERS PAYLOAD [STAGE...]\n");
		return 2;
	}
	int procs = atoi(argv[1]), iters = atoi(argv[2]), len = atoi(argv[3]);
	if (procs < 2 || procs > 8 || iters < 1 || len < 1 || len > 1 << 20) {
		fprintf(stderr, "hopfloor: PROCESSES must be 2..8, ITERS >= 1, PAYLOAD 1..1048576\n");
		return 2;
	}
	if (argc - 4 > procs - 1) {
		fprintf(stderr, "hopfloor: %d stages for %d processes after the first\n", argc - 4, procs - 1);
		return 2;
	}
	char *buf = malloc(len);
	int sp[8][2];
	pid_t kids[8];
	for (int i = 0; i < procs - 1; i++) {
		if (tcp && i == procs - 2 ? tcppair(sp[i]) != 0 : socketpair(AF_UNIX, SOCK_STREAM, 0, sp[i]) != 0) {
			perror("hopfloor: socketpair");
			return 1;
		}
	}
	for (int s = 1; s < procs; s++) {
		kids[s] = fork();
		if (kids[s] < 0) {
			perror("hopfloor: fork");
			return 1;
		}
		if (kids[s] == 0) {
			int up = sp[s - 1][1], down = s < procs - 1 ? sp[s][0] : -1;
			const char *stage = 4 + s - 1 < argc ? argv[4 + s - 1] : "-";
			if (strcmp(stage, "-") != 0) {
				// The stage gets its sockets as fds 3 and 4, and no others.
				int u = dup(up), d = down >= 0 ? dup(down) : -1;
				if (u < 0 || (down >= 0 && d < 0) || dup2(u, 3) < 0 || (d >= 0 && dup2(d, 4) < 0)) {
					perror("hopfloor: dup2");
					_exit(1);
				}
				for (int fd = 5; fd < 64; fd++)
					close(fd);
				if (d < 0)
					close(4);
				execl("/bin/sh", "sh", "-c", stage, (char *)NULL);
				perror("hopfloor: exec");
				_exit(1);
			}
			// Only its own sockets, so that the chain's end reaches every
			// stage as end of file.
			for (int i = 0; i < procs - 1; i++) {
				if (sp[i][0] != down)
					close(sp[i][0]);
				if (sp[i][1] != up)
					close(sp[i][1]);
			}
			for (;;) {
				xfer(up, buf, len, 1);
				if (down >= 0) {
					xfer(down, buf, len, 0);
					xfer(down, buf, len, 1);
				}
				xfer(up, buf, len, 0);
			}
		}
	}
	for (int i = 0; i < procs - 1; i++) {
		if (i > 0)
			close(sp[i][0]);
		close(sp[i][1]);
	}
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < iters; i++) {
		xfer(sp[0][0], buf, len, 0);
		xfer(sp[0][0], buf, len, 1);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	// Closing the first socket ends the chain from its top: each stage
	// reads its end and exits (a Go stage printing what it used first).
	close(sp[0][0]);
	while (wait(NULL) > 0)
		;
	double secs = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
	printf("%d processes, %d-byte token: %.0f round trips/s (%.1f us each)\n", procs, len,
	       iters / secs, secs / iters * 1e6);
	return 0;
}
