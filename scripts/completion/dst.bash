# bash completion for dst
_dst() {
	local cur prev cmd
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	cmd=${COMP_WORDS[1]}
	if [ "$COMP_CWORD" -eq 1 ]; then
		COMPREPLY=($(compgen -W "keygen pubkey serve attach detach list status events info udev version help" -- "$cur"))
		return
	fi
	case $prev in
	--key | --config | --authorized-keys | -o | --status-socket)
		COMPREPLY=($(compgen -f -- "$cur"))
		return ;;
	esac
	local flags=""
	case $cmd in
	serve) flags="--config --listen --key --authorized-keys --export --cipher --workers --max-sessions-per-key --metrics-listen --status-socket --allow-insecure-key-mode --log-level --log-format status" ;;
	attach) flags="--key --server-key --cipher --connect-timeout --device --nbd-listen --connections --queues --io-timeout --keepalive --keepalive-timeout --replay-buffer --procs --dead-conn-timeout --metrics-listen --name --read-only --take-over --allow-insecure-key-mode --log-level --log-format" ;;
	info) flags="--key --server-key --cipher --connect-timeout --allow-insecure-key-mode" ;;
	status | events) flags="--json" ;;
	detach) flags="--wait" ;;
	keygen) flags="-o" ;;
	esac
	case $cur in
	-*) COMPREPLY=($(compgen -W "$flags" -- "$cur")) ;;
	/dev/*) COMPREPLY=($(compgen -W "$(ls -d /dev/nbd* /dev/dst/* 2>/dev/null)" -- "$cur")) ;;
	esac
}
complete -F _dst dst
