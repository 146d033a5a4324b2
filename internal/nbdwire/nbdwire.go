package nbdwire

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrShort is wrapped by decode errors for buffers shorter than the form.
var ErrShort = errors.New("nbdwire: short buffer")

// ErrMalformed is wrapped by decode errors for bytes that are not the form:
// a wrong magic number, lengths that do not add up, trailing bytes.
var ErrMalformed = errors.New("nbdwire: malformed")

func short(what string, need, have int) error {
	return fmt.Errorf("%w: %s needs %d bytes, have %d", ErrShort, what, need, have)
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// flagString names the bits set in f, bit i by names[i], joined by "|";
// bits without a name are printed together in hex at the end. Zero is "0".
func flagString(f uint64, names []string) string {
	if f == 0 {
		return "0"
	}
	var parts []string
	for i, name := range names {
		if name != "" && f&(1<<i) != 0 {
			parts = append(parts, name)
			f &^= 1 << i
		}
	}
	if f != 0 {
		parts = append(parts, "0x"+strconv.FormatUint(f, 16))
	}
	return strings.Join(parts, "|")
}

// enumString names v from names, or prints prefix and v's number.
func enumString[T comparable](v T, names map[T]string, prefix string, n uint64) string {
	if s, ok := names[v]; ok {
		return s
	}
	return prefix + strconv.FormatUint(n, 10)
}
