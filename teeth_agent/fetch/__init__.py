"""Getting bytes from a server: the URL rule (:mod:`.urls`), the
checksum rule (:mod:`.hashes`) and the resumable, verified download
(:mod:`.download`, :mod:`.http_source`)."""
