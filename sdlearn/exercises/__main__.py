from sdlearn.exercises import main

main()
