"""The one exception type for mistakes a user can fix (bad path, bad override, bad checkpoint).

Entry points print its message without a traceback: it already names the thing and the fix.
"""


class VitftError(Exception):
    """A user-fixable problem, raised early with the file or config key and the fix."""
