"""Download errors: the kind of failure is the type."""


class DownloadError(Exception):
    """A download failed. Its type says whether trying again can help:
    :class:`RetryableDownloadError` or :class:`FinalDownloadError`."""


class RetryableDownloadError(DownloadError):
    """The servers could not be reached or kept failing (connection
    errors, timeouts, deadlines, 5xx) until the retries ran out; a later
    try may work."""


class AttemptDeadline(RetryableDownloadError):
    """A download attempt ran past its deadline (a slow or stalled
    server); the attempt is retried, another URL tried."""


class FinalDownloadError(DownloadError):
    """Trying again cannot help."""


class ChecksumMismatch(FinalDownloadError):
    """The bytes received do not have the expected checksum."""

    def __init__(self, algorithm, expected, actual):
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__("%s checksum mismatch: expected %s, got %s"
                         % (algorithm, expected, actual))


class SizeMismatch(FinalDownloadError):
    """A server's size differs from the expected one (or an earlier
    answer's), or it sent more bytes than it announced."""


class ImageTooLarge(FinalDownloadError):
    """The download is larger than the ``max_size`` allowed."""


class NoSpace(FinalDownloadError):
    """The sink's file system is full (or too small to hold the image)."""


class URLRejected(FinalDownloadError):
    """One URL will not work (a 4xx answer); the next one is tried."""


class RedirectRefused(URLRejected):
    """A URL redirected where a download may not go (see
    :class:`RedirectPolicy`), too often, or without a ``Location``."""


class NoUsableURL(FinalDownloadError):
    """Every URL was ruled out; ``rejections`` maps each URL to its
    :class:`URLRejected`."""

    def __init__(self, rejections):
        self.rejections = dict(rejections)
        super().__init__("no URL could be downloaded: %s"
                         % "; ".join(str(exc)
                                     for exc in self.rejections.values()))
