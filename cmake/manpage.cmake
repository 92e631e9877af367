# Generates airlock.1 from the binary's own help texts (`airlock help` and
# `airlock help <command>`), so the man page never drifts from --help.
#   cmake -DBIN=path/to/airlock -DOUT=airlock.1 -DVERSION=x.y.z -P manpage.cmake
function(help_text var)
  execute_process(COMMAND ${BIN} help ${ARGN} OUTPUT_VARIABLE text RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "airlock help ${ARGN} failed (${rc})")
  endif()
  # roff: escape backslashes; a line starting with . or ' would be a request.
  string(REPLACE "\\" "\\e" text "${text}")
  string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" text "${text}")
  set(${var} "${text}" PARENT_SCOPE)
endfunction()

help_text(top)
set(page ".TH AIRLOCK 1 \"\" \"airlock ${VERSION}\" \"User Commands\"
.SH NAME
airlock \\- egress proxy for AI agents: credential injection, egress checks and audit
.SH SYNOPSIS
.nf
${top}.fi
.SH DESCRIPTION
airlock sits between AI agents and the services they call. Agents send their HTTP(S)
traffic through it (HTTP_PROXY/HTTPS_PROXY, or gateway URLs /t/<target>/...); airlock
matches each request to a target of its YAML table, injects the target's credential
from its encrypted store, checks the destination, and writes one audit record.
The full manual is README.md in the documentation directory (share/doc/airlock).
")
foreach(cmd serve check identity store ca env)
  help_text(text ${cmd})
  string(APPEND page ".SH AIRLOCK ${cmd}\n.nf\n${text}.fi\n")
endforeach()
string(APPEND page ".SH FILES
.TP
.I share/airlock/examples/
example target tables, one per target type, and the quickstart's
.TP
.I lib/systemd/system/airlock.service
the hardened systemd unit
.SH SEE ALSO
.BR curl (1),
.BR openssl (1)
")
file(WRITE ${OUT} "${page}")
