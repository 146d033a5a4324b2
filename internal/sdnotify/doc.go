// Package sdnotify owns dst's side of systemd's service notification
// protocol (sd_notify(3)): readiness, reload and stop announcements, status
// lines and watchdog keep-alives, sent as datagrams to $NOTIFY_SOCKET.
//
// Every function is a no-op returning nil when the process was not started
// by systemd with Type=notify (NOTIFY_SOCKET unset), so callers need not
// check whether they run under systemd.
package sdnotify
