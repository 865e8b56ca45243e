# lib.sh: helpers the recipes source. POSIX sh; needs curl for downloads.
# Every fetch goes to NAME.part and is renamed only once verified, so an
# interrupted or bad download never leaves a file that looks finished.

die() { echo "$RECIPE: error: $*" >&2; exit 1; }
say() { echo "$RECIPE: $*"; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch URL DEST: downloads (resuming a .part left by an earlier try) to DEST.part.
fetch() {
    command -v curl >/dev/null 2>&1 || die "curl is needed to download $1"
    say "downloading $1"
    curl -fL --retry 3 --connect-timeout 20 -C - -o "$2.part" "$1" ||
        die "download of $1 failed (no network? the file can also be copied to $2 by hand)"
}

# bytes FILE: its size.
bytes() { wc -c < "$1" | tr -d ' '; }

# check_shard FILE: an llm.c token shard? 256 int32 header words (20240520,
# version 1, token count), then count uint16 tokens: the size must match.
# Prints the token count.
check_shard() {
    [ "$(bytes "$1")" -ge 1024 ] || die "$1: shorter than a shard header (1024 bytes)"
    set -- "$1" $(od -An -v -t d4 -N 12 "$1")     # little-endian hosts
    [ "$2" = 20240520 ] || die "$1: magic $2, not 20240520: not an llm.c token shard"
    [ "$3" = 1 ] || die "$1: version $3, expected 1 (uint16 GPT-2 tokens)"
    [ "$4" -gt 0 ] 2>/dev/null || die "$1: token count $4"
    want=$((1024 + 2 * $4))
    got=$(bytes "$1")
    [ "$got" = "$want" ] || die "$1: $got bytes, but its header says $4 tokens ($want bytes)"
    echo "$4"
}
