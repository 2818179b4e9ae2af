#!/usr/bin/env bash
# Checks that docs/guide.md shows real code: every ```rust, ```toml and ```sql block in it
# must appear verbatim (a run of whole lines) in a file of examples/travel, its worked example.
# Exits 1 and names each block that does not.
set -euo pipefail
cd "$(dirname "$0")/.."
exec perl -e '
use strict;
use warnings;
my ($guide, $dir) = @ARGV;
my @sources;
my @todo = ($dir);
while (my $d = shift @todo) {
    opendir(my $h, $d) or die "cannot read $d: $!";
    for my $e (sort grep { !/^\./ } readdir $h) {
        my $p = "$d/$e";
        if (-d $p) { push @todo, $p; next }
        next unless $p =~ /\.(rs|toml|sql)$/;
        open(my $f, "<", $p) or die "cannot read $p: $!";
        local $/;
        push @sources, "\n" . <$f>;
    }
}
open(my $g, "<", $guide) or die "cannot read $guide: $!";
my ($in, $block, $start, $line, $checked, $bad) = (0, "", 0, 0, 0, 0);
while (my $l = <$g>) {
    $line++;
    if (!$in && $l =~ /^```(rust|toml|sql)\s*$/) { ($in, $block, $start) = (1, "", $line); next }
    if ($in && $l =~ /^```\s*$/) {
        $in = 0;
        $checked++;
        unless (grep { index($_, "\n$block") >= 0 } @sources) {
            print STDERR "$guide:$start: this block is not in $dir verbatim:\n$block\n";
            $bad++;
        }
        next;
    }
    $block .= $l if $in;
}
die "$guide: no code blocks found\n" unless $checked;
print STDERR "$guide: $checked code blocks, ", $checked - $bad, " found in $dir\n";
exit($bad ? 1 : 0);
' docs/guide.md examples/travel
