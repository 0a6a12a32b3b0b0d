"""How candidates become numbers and how the search runs: builder, scaling, training, measurement, search."""
