# cloud-config.awk - parse the subset of YAML that #cloud-config user-data
# uses in practice, for busybox awk.  Usage:
#   awk -v out=DIR -f cloud-config.awk user-data
# Writes, under DIR:
#   hostname              value of `hostname:` (or `fqdn:` when no hostname)
#   ssh_authorized_keys   one key per line
#   packages              one package per line (`[name, version]` -> name=version)
#   runcmd                shell script body, one command per item
#                         (string items verbatim, list items shell-quoted)
#   wf.N.path, wf.N.content, wf.N.permissions, wf.N.encoding, wf.N.owner,
#   wf.N.append           one set per write_files item, N = 1, 2, ...
#   unsupported           top-level keys that are ignored
# Supported YAML: top-level `key: value` mappings, block lists (`- item`,
# indented or not), flow lists (`[a, "b", 'c']`), plain / 'single' /
# "double" quoted scalars (\n \t \\ \" escapes), block scalars `|`, `|-`,
# `|+`, `>` (for write_files content and runcmd items), comments.
# Not supported: anchors/aliases, multi-line plain or quoted scalars,
# nested mappings other than write_files items, multi-document streams.

function ind(s) { match(s, /^ */); return RLENGTH }
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }

function scalar(v,    c, r, i, n, ch) {
	v = trim(v)
	c = substr(v, 1, 1)
	if (c == "\"") {
		r = ""; n = length(v)
		for (i = 2; i <= n; i++) {
			ch = substr(v, i, 1)
			if (ch == "\\") {
				i++; ch = substr(v, i, 1)
				if (ch == "n") r = r "\n"
				else if (ch == "t") r = r "\t"
				else if (ch == "r") r = r "\r"
				else if (ch == "0") r = r
				else r = r ch
			} else if (ch == "\"") {
				break
			} else {
				r = r ch
			}
		}
		return r
	}
	if (c == "'") {
		r = ""; n = length(v)
		for (i = 2; i <= n; i++) {
			ch = substr(v, i, 1)
			if (ch == "'") {
				if (substr(v, i + 1, 1) == "'") { r = r "'"; i++ }
				else break
			} else {
				r = r ch
			}
		}
		return r
	}
	if (v == "~" || v == "null") return ""
	sub(/[ \t]+#.*$/, "", v)
	return v
}

# flow("[a, 'b c', \"d\"]", arr) -> number of elements, stored in arr[1..n]
function flow(v, arr,    n, i, ch, cur, q, len) {
	v = trim(v)
	sub(/^\[/, "", v)
	sub(/\][ \t]*(#.*)?$/, "", v)
	n = 0; cur = ""; q = ""; len = length(v)
	for (i = 1; i <= len; i++) {
		ch = substr(v, i, 1)
		if (q != "") {
			cur = cur ch
			if (q == "\"" && ch == "\\") { i++; cur = cur substr(v, i, 1); continue }
			if (ch == q) {
				if (q == "'" && substr(v, i + 1, 1) == "'") { i++; cur = cur "'"; continue }
				q = ""
			}
			continue
		}
		if (ch == "\"" || ch == "'") { q = ch; cur = cur ch; continue }
		if (ch == ",") { arr[++n] = scalar(cur); cur = ""; continue }
		cur = cur ch
	}
	if (trim(cur) != "" || n > 0) arr[++n] = scalar(cur)
	return n
}

# POSIX shell single-quoting without backslashes: a'b -> 'a'"'"'b'
function shq(s,    parts, n, i, r) {
	n = split(s, parts, "'")
	r = "'" parts[1]
	for (i = 2; i <= n; i++) r = r "'\"'\"'" parts[i]
	return r "'"
}

function put(name, val,    f) {
	f = out "/" name
	printf "%s", val > f
	close(f)
}

function emit_runcmd(cmd) { print cmd > (out "/runcmd") }

function emit_list(key, v,    arr, n, i, s) {
	if (key == "packages") {
		if (substr(trim(v), 1, 1) == "[") {
			n = flow(v, arr); s = arr[1]
			for (i = 2; i <= n; i++) s = s "=" arr[i]
			v = s
		} else v = scalar(v)
		if (v != "") print v > (out "/packages")
	} else if (key == "ssh_authorized_keys") {
		v = scalar(v)
		if (v != "") print v > (out "/ssh_authorized_keys")
	}
}

function start_block(hdr, parent, target) {
	blk = 1; blk_parent = parent; blk_ind = -1; blk_target = target
	blk_style = substr(hdr, 1, 1)
	blk_chomp = "clip"
	if (hdr ~ /-/) blk_chomp = "strip"
	if (hdr ~ /\+/) blk_chomp = "keep"
	blk_n = 0; blk_blank = 0
}

function blk_add(t,    k) {
	for (k = 0; k < blk_blank; k++) blk_line[++blk_n] = ""
	blk_blank = 0
	blk_line[++blk_n] = t
}

function end_block(    body, i, k, prev_empty) {
	body = ""
	if (blk_style == "|") {
		for (i = 1; i <= blk_n; i++) body = body (i > 1 ? "\n" : "") blk_line[i]
	} else {
		prev_empty = 1
		for (i = 1; i <= blk_n; i++) {
			if (blk_line[i] == "") { body = body "\n"; prev_empty = 1; continue }
			if (!prev_empty) body = body " "
			body = body blk_line[i]; prev_empty = 0
		}
	}
	if (blk_n > 0 && blk_chomp != "strip") body = body "\n"
	if (blk_chomp == "keep") for (k = 0; k < blk_blank; k++) body = body "\n"
	if (blk_target == "runcmd") emit_runcmd(body)
	else put(blk_target, body)
	blk = 0
}

# key: value inside a write_files item; col = column of the key
function wf_kv(s, col,    k, v) {
	if (!match(s, /^[A-Za-z_][A-Za-z0-9_-]*:/)) return
	k = substr(s, 1, RLENGTH - 1)
	v = trim(substr(s, RLENGTH + 1))
	if (k != "path" && k != "content" && k != "permissions" && k != "encoding" && k != "owner" && k != "append" && k != "defer") return
	if (v ~ /^[|>][-+0-9]*([ \t]+#.*)?$/) {
		sub(/[ \t]+#.*$/, "", v)
		start_block(v, col, "wf." wf "." k)
		return
	}
	put("wf." wf "." k, scalar(v))
}

BEGIN { blk = 0; top = ""; wf = 0; rc_nested = 0; rc_item_ind = -1 }

{
	line = $0
	sub(/\r$/, "", line)

	if (blk) {
		if (line ~ /^[ \t]*$/) { blk_blank++; next }
		i = ind(line)
		if (blk_ind < 0 && i > blk_parent) blk_ind = i
		if (blk_ind >= 0 && i >= blk_ind) { blk_add(substr(line, blk_ind + 1)); next }
		end_block()
	}

	if (line ~ /^[ \t]*$/ || line ~ /^[ \t]*#/) next
	if (line ~ /^---/ || line ~ /^\.\.\./) next
	i = ind(line)
	s = substr(line, i + 1)

	# top-level key
	if (i == 0 && s !~ /^-( |$)/) {
		if (rc_nested) emit_runcmd(rc_cmd)
		rc_nested = 0; rc_item_ind = -1
		if (!match(s, /^[^:]+:/)) { top = ""; next }
		top = trim(substr(s, 1, RLENGTH - 1))
		gsub(/^["']|["']$/, "", top)
		v = trim(substr(s, RLENGTH + 1))
		if (top == "hostname") { put("hostname", scalar(v)); next }
		if (top == "fqdn") { put("fqdn", scalar(v)); next }
		if (top == "packages" || top == "ssh_authorized_keys" || top == "runcmd") {
			if (substr(v, 1, 1) == "[") {
				n = flow(v, items)
				for (k = 1; k <= n; k++) {
					if (top == "runcmd") emit_runcmd(items[k])
					else emit_list(top, items[k])
				}
			}
			next
		}
		if (top == "write_files") next
		if (top == "package_update" || top == "package_upgrade" || top == "package_reboot_if_required") next
		print top > (out "/unsupported")
		top = ""
		next
	}

	if (top == "") next

	# list item
	if (s ~ /^-( |$)/) {
		rest = (s == "-") ? "" : trim(substr(s, 3))
		if (top == "write_files") {
			wf++
			if (rest != "") wf_kv(rest, i + 2)
			next
		}
		if (top == "runcmd") {
			if (rc_nested && i > rc_item_ind) {
				# continuation of a nested block list:  - - cmd\n    - arg
				rc_cmd = rc_cmd " " shq(scalar(rest))
				next
			}
			if (rc_nested) { emit_runcmd(rc_cmd); rc_nested = 0 }
			rc_item_ind = i
			if (substr(rest, 1, 1) == "[") {
				n = flow(rest, items); c = ""
				for (k = 1; k <= n; k++) c = c (k > 1 ? " " : "") shq(items[k])
				emit_runcmd(c)
			} else if (rest ~ /^[|>][-+0-9]*$/) {
				start_block(rest, i, "runcmd")
			} else if (rest ~ /^-( |$)/) {
				rc_nested = 1
				rc_cmd = shq(scalar(substr(rest, 3)))
			} else {
				emit_runcmd(scalar(rest))
			}
			next
		}
		emit_list(top, rest)
		next
	}

	# mapping line inside a list item
	if (top == "write_files" && wf > 0) wf_kv(s, i)
}

END {
	if (blk) end_block()
	if (rc_nested) emit_runcmd(rc_cmd)
}
