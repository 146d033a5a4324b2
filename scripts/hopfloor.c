// hopfloor: how fast a request can make a round trip through a chain of
// processes on this machine when the processes do no work at all.
//
// A token of PAYLOAD bytes goes from the first process down a chain of unix
// socketpairs to the last and back, ITERS times, with blocking reads and
// writes. Two processes are an NBD client and its server (nbdkit); three are
// an NBD client, dst attach and dst serve. The result bounds any QD1 figure
// for that shape from above: real software only adds work to it.
//
// usage: hopfloor PROCESSES ITERS PAYLOAD   (PROCESSES 2..8)
// scripts/bench --floor builds it with cc and runs it.
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
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

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: hopfloor PROCESSES ITERS PAYLOAD\n");
		return 2;
	}
	int procs = atoi(argv[1]), iters = atoi(argv[2]), len = atoi(argv[3]);
	if (procs < 2 || procs > 8 || iters < 1 || len < 1 || len > 1 << 20) {
		fprintf(stderr, "hopfloor: PROCESSES must be 2..8, ITERS >= 1, PAYLOAD 1..1048576\n");
		return 2;
	}
	char *buf = malloc(len);
	int sp[8][2];
	pid_t kids[8];
	for (int i = 0; i < procs - 1; i++) {
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp[i]) != 0) {
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
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < iters; i++) {
		xfer(sp[0][0], buf, len, 0);
		xfer(sp[0][0], buf, len, 1);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	for (int s = 1; s < procs; s++)
		kill(kids[s], SIGKILL);
	while (wait(NULL) > 0)
		;
	double secs = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
	printf("%d processes, %d-byte token: %.0f round trips/s (%.1f us each)\n", procs, len,
	       iters / secs, secs / iters * 1e6);
	return 0;
}
