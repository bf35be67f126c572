"""nim-operator: reconciles NIMService resources into GPU-placed inference pods."""
